"""Review of bc0cd58f (the same SIGINT/SIGTERM a second time ends ``serve()``'s drain now):
two servers in one process (``asyncio.gather(serve("a"), serve("b"))``), each with a call
of every kind hung in flight (unary, server stream past its first message, client
stream, bidi stream, a plain-function handler in its thread): the second Ctrl-C ends
both drains, every call ends ``UNAVAILABLE``, the process exits 0 well inside
``grace_s``, each server logs "ending it now" once and "stopped"; a third signal after
it is only logged. On asyncio's loop and on uvloop (``meshkit.run``). Real child
process, the signals sent by ``os.kill`` from here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

_CHILD = r"""
import asyncio, logging, sys, tempfile, threading, time
from pathlib import Path
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
_said = threading.Lock()

def say(*words):  # one whole line at a time: the handler threads print too
    with _said:
        print(*words, flush=True)

async def unary(request, context):
    say("in flight")
    await asyncio.sleep(600)
    return b"late"

async def server_stream(request, context):
    yield b"first"
    say("in flight")
    await asyncio.sleep(600)
    yield b"late"

async def client_stream(requests, context):
    say("in flight")
    await asyncio.sleep(600)
    return b"late"

async def bidi(requests, context):
    async for _ in requests:
        yield b"echo"
        say("in flight")
        await asyncio.sleep(600)

def sync_unary(request, context):
    say("in flight")
    time.sleep(600)
    return b"late"

def add(_servicer, server):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Hang", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Sync": grpc.unary_unary_rpc_method_handler(sync_unary)}),))

async def main():
    registry = LocalRegistry(LocalOptions(path=Path(tempfile.mkdtemp()) / "reg", ttl_s=15.0))
    opts = meshkit.ServeOptions(insecure=True, admin=None, host="127.0.0.1",
                                drain_delay_s=0.0, grace_s=SIG_GRACE)
    try:
        await asyncio.gather(*(
            meshkit.serve(name, [(add, None)], registry=registry, options=opts,
                          on_started=lambda srv: say("port", srv.port))
            for name in ("a", "b")))
        print("entries left", len(await registry.instances("a"))
              + len(await registry.instances("b")), flush=True)
    finally:
        await registry.close()

RUNNER(main())
print("exited cleanly", flush=True)
"""

_GRACE_S = 60.0
_KINDS = 5  # calls per server


def _lines(stream: IO[str], out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put("<eof>")


def _wait_for(out: queue.Queue[str], seen: list[str], want: str, timeout_s: float) -> str:
    end = time.monotonic() + timeout_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line with {want!r} in {timeout_s} s: {seen}")
        try:
            line = out.get(timeout=left)
        except queue.Empty:
            continue
        seen.append(line)
        if want in line:
            return line
        if line == "<eof>":
            raise AssertionError(f"the child ended before {want!r}: {seen}")


def _calls(channel: grpc.Channel) -> list[tuple[str, Any]]:
    """One call of each kind, each left hanging by its handler (a future per call; a
    stream's iterator)."""
    def requests() -> Any:
        yield b"x"
        time.sleep(600)  # the client stream stays open (the call's end ends this thread)

    unary: Any = channel.unary_unary("/t.Hang/Unary")
    sync: Any = channel.unary_unary("/t.Hang/Sync")
    server_stream: Any = channel.unary_stream("/t.Hang/ServerStream")
    client_stream: Any = channel.stream_unary("/t.Hang/ClientStream")
    bidi: Any = channel.stream_stream("/t.Hang/Bidi")
    stream = server_stream(b"x", timeout=100)
    assert next(stream) == b"first"
    both = bidi(iter([b"x"]), timeout=100)
    assert next(both) == b"echo"
    return [("unary", unary.future(b"x", timeout=100)),
            ("sync", sync.future(b"x", timeout=100)),
            ("server-stream", stream),
            ("client-stream", client_stream.future(iter([b"x"]), timeout=100)),
            ("bidi", both)]


def _outcome(kind: str, call: Any) -> grpc.StatusCode:
    """The status a call ended with (bounded: 30 s, its own 100 s timeout at most)."""
    try:
        if kind in ("server-stream", "bidi"):
            for _ in call:
                pass
        else:
            call.result(timeout=30)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


@pytest.mark.timeout(150)
@pytest.mark.parametrize("runner", ["asyncio.run", "meshkit.run"],
                         ids=["asyncio", "uvloop"])
def test_a_second_signal_ends_every_servers_drain_and_every_kind_of_call(
        runner: str, tmp_path: Path) -> None:
    child = _CHILD.replace("SIG_GRACE", repr(_GRACE_S)).replace("RUNNER", runner)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    seen: list[str] = []
    channels: list[grpc.Channel] = []
    try:
        ports = [int(_wait_for(out, seen, "port ", 30).split()[-1]) for _ in range(2)]
        calls: list[tuple[str, Any]] = []
        for port in ports:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            channels.append(channel)
            calls += _calls(channel)
        flights = 0  # counted per occurrence: the sync handler's thread and the loop
        while flights < 2 * _KINDS:  # print at once, two on a line ("in flightin flight")
            flights += _wait_for(out, seen, "in flight", 30).count("in flight")
        os.kill(proc.pid, signal.SIGINT)
        for _ in range(2):
            _wait_for(out, seen, "draining", 30)
        time.sleep(1.0)  # well into the grace: the drains wait for the calls
        assert proc.poll() is None, seen
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        for _ in range(2):  # each server's own warning
            _wait_for(out, seen, "ending it now", 20)
        # a third one: only logged, or (drains ended) the previous handler's
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=30)  # half of grace_s: not the grace ending
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the second SIGINT did not end both drains: {seen}") \
                from None
        took = time.monotonic() - sent
        outcomes = {f"{port}/{kind}": _outcome(kind, call)
                    for port, (kind, call) in zip(
                        [p for p in ports for _ in range(_KINDS)], calls, strict=True)}
        _wait_for(out, seen, "<eof>", 10)
    finally:
        for channel in channels:
            channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert took < _GRACE_S / 2, seen
    assert set(outcomes.values()) == {grpc.StatusCode.UNAVAILABLE}, outcomes
    assert sum("ending it now" in line for line in seen) == 2, seen
    assert sum(line.startswith("LOG") and "stopped" in line for line in seen) == 2, seen
    # asyncio.run's own SIGINT handling back after the drains (a KeyboardInterrupt)
    # or the third signal logged: either way the process ended as a drain does
    assert code == 0 or "KeyboardInterrupt" in "\n".join(seen), (code, seen)
    if code == 0:
        assert "exited cleanly" in seen, seen
        assert "entries left 0" in seen, seen
