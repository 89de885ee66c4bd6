"""A plain-function handler's ``KeyboardInterrupt`` with a request stream (review of
e347c26b, whose test covers unary and server-streaming handlers): a client-streaming
handler raising it while it iterates its requests, a bidi generator raising it after
it answered, a bidi plain function raising it before it returns a stream. Each call
ends ``UNKNOWN`` (:class:`meshkit._handlers.EscapedKeyboardInterrupt`), the event loop
is not stopped and the server serves on. Run in a child process (an escaped interrupt
would end pytest's own run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_CHILD = r'''
import asyncio, sys, tempfile
from pathlib import Path
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry

def cs(request_iterator, context):
    for r in request_iterator:
        if r == b"stop":
            raise KeyboardInterrupt("client stream")
    return b"done"

def bidi_gen(request_iterator, context):
    for r in request_iterator:
        yield r
        if r == b"stop":
            raise KeyboardInterrupt("bidi gen")

def bidi_plain(request_iterator, context):
    first = next(request_iterator)
    raise KeyboardInterrupt("bidi plain before stream")

def ok(request, context):
    return b"ok"

def add(_servicer, server):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Kbd", {
        "Cs": grpc.stream_unary_rpc_method_handler(cs),
        "BidiGen": grpc.stream_stream_rpc_method_handler(bidi_gen),
        "BidiPlain": grpc.stream_stream_rpc_method_handler(bidi_plain),
        "Ok": grpc.unary_unary_rpc_method_handler(ok)}),))

async def main():
    registry = LocalRegistry(LocalOptions(path=Path(tempfile.mkdtemp()) / "reg", ttl_s=15.0))
    srv = meshkit.MeshServer("kbd", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            async def reqs():
                yield b"a"
                yield b"stop"
                await asyncio.sleep(3)
            try:
                print("cs", await ch.stream_unary("/t.Kbd/Cs")(reqs(), timeout=5))
            except grpc.aio.AioRpcError as e:
                print("cs", e.code().name, e.details())
            for name in ("BidiGen", "BidiPlain"):
                got = []
                try:
                    async for m in ch.stream_stream(f"/t.Kbd/{name}")(reqs(), timeout=5):
                        got.append(m)
                    print(name, "OK", got)
                except grpc.aio.AioRpcError as e:
                    print(name, e.code().name, got, e.details())
            print("after", await ch.unary_unary("/t.Kbd/Ok")(b"x", timeout=5))
    finally:
        await srv.drain()
        await registry.close()

asyncio.run(main())
print("exited cleanly")
'''


@pytest.mark.timeout(60)
def test_a_plain_handlers_keyboard_interrupt_with_a_request_stream_is_answered() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          timeout=50, check=False, cwd=Path(__file__).parents[1])
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert len(lines) == 5, lines
    assert lines[0].startswith("cs UNKNOWN ") and "EscapedKeyboardInterrupt" in lines[0], lines
    assert lines[1].startswith("BidiGen UNKNOWN [b'a', b'stop']"), lines
    assert "EscapedKeyboardInterrupt" in lines[1], lines
    assert lines[2].startswith("BidiPlain UNKNOWN []"), lines
    assert "EscapedKeyboardInterrupt" in lines[2], lines
    assert lines[3:] == ["after b'ok'", "exited cleanly"], lines
