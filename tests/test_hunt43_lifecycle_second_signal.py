"""The same SIGINT/SIGTERM a second time during ``serve()``'s drain ends the drain now.

The first Ctrl-C (or SIGTERM) drains: in-flight calls get ``grace_s`` to finish. A second
one was only logged ("the drain goes on"), so a handler that never returns held the
process for the whole ``grace_s`` (60 s here) whatever the operator did; uvicorn treats a
second Ctrl-C as "stop now", Kubernetes sends SIGKILL after the grace. Now the same signal
again cancels the in-flight calls (their callers get ``UNAVAILABLE``), the server is
stopped and closed, ``serve()`` returns, and the process exits 0 well inside
``grace_s``; a warning says so. Another signal (Ctrl-C reaching the process group, then
honcho's or foreman's SIGTERM to its children) still lets the drain go on, as
tests/integration/test_processes.py::test_a_second_signal_during_the_drain_does_not_kill_
in_flight_calls asks; that signal again ends it. Run in a real child process, the
signals sent by ``os.kill`` from here.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from meshkit.server import MeshServer, ServeOptions

_CHILD = r"""
import asyncio, logging, sys, tempfile
from pathlib import Path
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")

async def hang(request, context):
    print("in flight", flush=True)
    await asyncio.sleep(600)
    return b"late"

def add(_servicer, server):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Hang", {
        "Hang": grpc.unary_unary_rpc_method_handler(hang)}),))

async def main():
    registry = LocalRegistry(LocalOptions(path=Path(tempfile.mkdtemp()) / "reg", ttl_s=15.0))
    opts = meshkit.ServeOptions(insecure=True, admin=None, host="127.0.0.1",
                                drain_delay_s=0.0, grace_s=SIG_GRACE)
    try:
        await meshkit.serve("hang", [(add, None)], registry=registry, options=opts,
                            on_started=lambda srv: print("port", srv.port, flush=True))
    finally:
        await registry.close()

RUNNER(main())
print("exited cleanly", flush=True)
"""

_GRACE_S = 60.0


def _lines(stream: IO[str], out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put("<eof>")


def _wait_for(out: queue.Queue[str], seen: list[str], want: str, timeout_s: float) -> str:
    """The first line holding ``want`` within ``timeout_s`` (every line read kept in
    ``seen``); AssertionError naming what came instead."""
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


# The fix: meshkit/server.py's MeshServer._end_drain_now, called by
# _serve_until_signal's on_signal for the same signal a second time.


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("signals", "runner"), [
    ((signal.SIGINT, signal.SIGINT), "asyncio.run"),
    ((signal.SIGTERM, signal.SIGTERM), "asyncio.run"),
    ((signal.SIGINT, signal.SIGINT), "meshkit.run"),
    ((signal.SIGINT, signal.SIGTERM, signal.SIGTERM), "asyncio.run")],
    ids=["SIGINT-twice", "SIGTERM-twice", "SIGINT-twice-meshkit.run",
         "SIGINT-then-SIGTERM-twice"])
def test_the_same_signal_again_during_the_drain_ends_it_now(
        signals: tuple[signal.Signals, ...], runner: str, tmp_path: Path) -> None:
    """``runner``: ``meshkit.run`` runs the child on uvloop's event loop (installed here).
    A signal other than those before (Ctrl-C to the process group, then a process
    manager's SIGTERM: tests/integration/test_processes.py) lets the drain go on; the
    same one again ends it."""
    child = _CHILD.replace("SIG_GRACE", repr(_GRACE_S)).replace("RUNNER", runner)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    seen: list[str] = []
    first, *others, second = signals
    try:
        port = int(_wait_for(out, seen, "port ", 30).split()[-1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            hang: Any = channel.unary_unary("/t.Hang/Hang")
            call = hang.future(b"x", timeout=100)
            _wait_for(out, seen, "in flight", 30)
            os.kill(proc.pid, first)
            _wait_for(out, seen, "draining", 30)
            for other in others:  # another signal: logged, the drain goes on
                os.kill(proc.pid, other)
                _wait_for(out, seen, "the drain goes on", 30)
            time.sleep(1.0)  # well into the grace: the drain waits for the call
            assert proc.poll() is None, seen
            assert not call.done()
            sent = time.monotonic()
            os.kill(proc.pid, second)
            try:
                code = proc.wait(timeout=20)  # a third of grace_s: not the grace ending
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the second {second.name} did not end the drain: "
                                     f"{seen}") from None
            took = time.monotonic() - sent
            with pytest.raises(grpc.RpcError) as info:
                call.result(timeout=20)
        _wait_for(out, seen, "<eof>", 10)
        assert code == 0, seen
        assert took < _GRACE_S / 3, seen
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert any("ending it now" in line for line in seen), seen
        assert "exited cleanly" in seen, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


_SERVICE = "hunt43.lifecycle.Hang"


@pytest.mark.timeout(60)
async def test_ending_a_drain_whose_task_has_not_run_yet_still_stops_the_server(
        registry: LocalRegistry) -> None:
    """The second signal can come between drain() making its task and that task's first
    step (both are loop callbacks). A task cancelled then never enters its coroutine, so
    the drain's ``finally`` (stop without grace, close) would never run: the server kept
    serving and ``drain()`` waited for ever. The cancel is made after the task's first
    step."""
    started = asyncio.Event()

    async def hang(request: bytes, context: Any) -> bytes:
        started.set()
        await asyncio.sleep(600)
        return b"late"

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Hang": grpc.unary_unary_rpc_method_handler(hang)})
    srv = MeshServer(_SERVICE, [(lambda h, server: server.add_generic_rpc_handlers((h,)),
                                 handler)], registry=registry,
                     options=ServeOptions(insecure=True, admin=None, drain_delay_s=0.0,
                                          grace_s=_GRACE_S))
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        hang_call: Any = channel.unary_unary(f"/{_SERVICE}/Hang")
        call = asyncio.ensure_future(hang_call(b"x", timeout=100))
        await asyncio.wait_for(started.wait(), 20)
        draining = asyncio.ensure_future(srv.drain())
        await asyncio.sleep(0)  # drain() runs: its task made, not yet run
        task = srv._drain_task
        assert task is not None
        cast(Any, srv)._end_drain_now(signal.SIGINT)  # (until server.py has it)
        await asyncio.wait_for(draining, 20)  # not the 60 s grace, nor for ever
        assert task.done()
        await asyncio.wait_for(srv.wait_stopped(), 5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, 20)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
