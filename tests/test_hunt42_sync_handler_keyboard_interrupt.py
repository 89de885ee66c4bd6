"""A plain-function handler's ``KeyboardInterrupt`` fails its call, not the whole server.

A plain-function handler runs in a thread, which Ctrl-C never reaches (Python delivers
signals to the main thread): a ``KeyboardInterrupt`` there is the handler's own code's
(a library re-raising a child process's SIGINT, a test helper's ``raise
KeyboardInterrupt``). Carried back to the event loop as the handler's result, it was
raised in the call's task, where asyncio lets it stop the loop: the server drained and
the process ended by SIGINT, the caller answered ``UNAVAILABLE`` "Cancelling all calls"
(the ``SystemExit`` twin, test_sync_handler_system_exit.py). It is now answered as any
unhandled exception of the handler, :class:`meshkit._handlers.EscapedKeyboardInterrupt`
(``UNKNOWN``), for a unary handler and a response stream alike, and the server serves
on. Run in a child process: before the fix the interrupt would have ended pytest's
own run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_CHILD = r"""
import asyncio, sys, tempfile
from pathlib import Path
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry

def interrupted(request, context):
    raise KeyboardInterrupt("from the handler")

def stream(request, context):
    yield b"first"
    raise KeyboardInterrupt("from the stream")

def ok(request, context):
    return b"ok"

def add(_servicer, server):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Kbd", {
        "Interrupted": grpc.unary_unary_rpc_method_handler(interrupted),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Ok": grpc.unary_unary_rpc_method_handler(ok)}),))

async def main():
    registry = LocalRegistry(LocalOptions(path=Path(tempfile.mkdtemp()) / "reg", ttl_s=15.0))
    srv = meshkit.MeshServer("kbd", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            try:
                await ch.unary_unary("/t.Kbd/Interrupted")(b"x", timeout=5)
                print("unary OK")
            except grpc.aio.AioRpcError as e:
                print("unary", e.code().name, e.details())
            got = []
            try:
                async for m in ch.unary_stream("/t.Kbd/Stream")(b"x", timeout=5):
                    got.append(m)
                print("stream OK", got)
            except grpc.aio.AioRpcError as e:
                print("stream", e.code().name, got, e.details())
            print("after", await ch.unary_unary("/t.Kbd/Ok")(b"x", timeout=5))
    finally:
        await srv.drain()
        await registry.close()

asyncio.run(main())
print("exited cleanly")
"""


@pytest.mark.timeout(60)
def test_a_plain_handlers_keyboard_interrupt_is_answered_and_the_server_serves_on() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          timeout=50, check=False, cwd=Path(__file__).parents[1])
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert lines[0].startswith("unary UNKNOWN ") and "EscapedKeyboardInterrupt" in lines[0], lines
    assert lines[1].startswith("stream UNKNOWN [b'first']"), lines
    assert "EscapedKeyboardInterrupt" in lines[1], lines
    assert lines[2:] == ["after b'ok'", "exited cleanly"], lines
