"""The "cancel every other task, then drain()" shutdown recipe, the loop-end stop of a server
never drained (tests/test_hunt39_threads_undrained_server_loop_end.py) beside it, and the
use-after-free in grpc.aio that both met.

A common way to shut an asyncio service down, inside ``main()``::

    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.drain()

Before: the task :meth:`MeshServer.start` leaves to stop a server its event loop ends
undrained (8137ff7e) took that cancel for the loop's end: it logged "server not drained
before its event loop ended", stopped the server without grace and marked it draining, so
the ``drain()`` that followed returned at once, without ``drain_delay_s`` or ``grace_s``.
Without the ``gather`` the drain waited its delay, then raised ``CancelledError`` into
``main()`` (the recipe had cancelled grpc.aio's serving task, whose end ``stop()`` awaits).

Under both, and under ``asyncio.run()``'s own sweep of a server left undrained, grpc.aio
wrote into freed memory: the recipe (or the sweep) cancels grpc.aio's pending
``_request_call`` tasks, which frees the ``RPCState`` each had handed to grpc core for the
next call, and the server's shutdown then has core fail those requests, writing the
call pointer and the metadata count into the freed objects (valgrind memcheck: two
"Invalid write of size 8" in cygrpc, 32 and 128 bytes inside a freed block of 240 bytes;
a bare ``grpc.aio`` server shows the same). That is the SIGSEGV a clean-clone CI run met
on uvloop with e6006c82 (reverted in 6eec89bd): heap corruption, so only now and then.

Each case runs in a subprocess (a crash is a failure, not a hang), on asyncio's loop and
uvloop's; the memcheck cases run the recipe and the undrained loop end under valgrind
(opt-in, about 4 minutes: ``make memcheck``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.skips import require_uvloop

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]
WARNING = "server not drained before its event loop ended"
DELAY_S = 0.5  # drain_delay_s: a drain that skips it (the fault) took 0.0 s
GRACE_S = 5.0

SCRIPT = textwrap.dedent("""
    import asyncio, gc, os, signal, sys, threading, time
    import grpc
    import grpc.aio._server as grpc_server
    import meshkit
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import add_echo

    where, how, loop, delay_s, grace_s = sys.argv[1:4] + [float(a) for a in sys.argv[4:6]]

    stops = []  # the grace of each grpc server stop()
    real_stop = grpc_server.Server.stop

    async def stop(self, grace):
        stops.append(grace)
        return await real_stop(self, grace)

    grpc_server.Server.stop = stop
    opts = meshkit.ServeOptions(insecure=True, instance_id="r1", drain_delay_s=delay_s,
                                grace_s=grace_s, admin=None, host="127.0.0.1")
    registry = f"local://{where}?ttl_s=60"

    def new_server():
        return meshkit.MeshServer("recipe", [add_echo("r1")], registry=registry,
                                  options=opts)

    async def cancel_all(gather):
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        if gather:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(server):
        began = time.monotonic()
        await server.drain()
        print("drained in", round(time.monotonic() - began, 2), flush=True)

    def call(address):
        with grpc.insecure_channel(address) as channel:
            sleep = channel.unary_unary("/meshkit.test.Echo/Sleep")
            try:
                sleep(b"3000", timeout=30)
                print("call ended OK", flush=True)
            except grpc.RpcError as exc:
                print("call ended", exc.code().name, flush=True)

    async def fail_soon():
        await asyncio.sleep(0.1)
        raise ValueError("sibling failed")

    async def main():
        if how.startswith("serve"):
            started = asyncio.Event()
            serving = asyncio.create_task(meshkit.serve(
                "recipe", [add_echo("r1")], registry=registry, options=opts,
                on_started=lambda _: started.set()))
            await asyncio.wait_for(started.wait(), 30)
            await asyncio.sleep(0.2)
            if how == "serve-cancelled":
                serving.cancel()
                try:
                    await serving
                except asyncio.CancelledError:
                    print("serve cancelled", flush=True)
            return  # serve-left: asyncio.run's end cancels it
        server = new_server()
        if how.startswith("other-task"):  # started by a task that then ends
            await asyncio.create_task(server.start())
        else:
            await server.start()
        if how != "recipe-at-once":
            await asyncio.sleep(0.2)  # its tasks under way
        if how == "recipe-in-flight":  # a call in flight, from a thread of its own
            threading.Thread(target=call, args=(server.instance.address,)).start()
            await asyncio.sleep(0.5)
        if how == "returns":
            return
        if how == "signal":  # the handler cancels main, which drains
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGTERM, asyncio.current_task().cancel)
            os.kill(os.getpid(), signal.SIGTERM)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await drain(server)
            return
        if how == "taskgroup":  # a sibling fails, the group cancels the rest
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(asyncio.sleep(30))
                    group.create_task(fail_soon())
            except* ValueError:
                pass
            await drain(server)
            return
        await cancel_all(gather=how != "recipe-at-once")
        if how in ("recipe-then-returns", "other-task-returns"):
            await asyncio.sleep(0.2)
            return
        await drain(server)

    try:
        meshkit.run(main(), use_uvloop=loop == "uvloop")
    except BaseException as exc:
        print("main raised", type(exc).__name__, flush=True)

    async def listed():
        reg = LocalRegistry(LocalOptions(path=where))
        watch = reg.watch("recipe")
        try:
            return sorted(i.instance_id for i in await anext(watch))
        finally:
            await watch.aclose()
            await reg.close()

    print("listed", asyncio.run(listed()), flush=True)
    print("stops", stops, flush=True)
    gc.collect()  # a grpc server left half stopped hung here
    print("collected", flush=True)
""")


def run_script(
    tmp_path: Path, how: str, loop: str, *, prefix: tuple[str, ...] = (), timeout_s: float = 90
) -> tuple[str, str]:
    if loop == "uvloop":
        require_uvloop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = str(REPO)
    if prefix:
        env["PYTHONMALLOC"] = "malloc"  # (valgrind sees each object's own block)
    proc = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path / "reg"),
            how,
            loop,
            str(DELAY_S),
            str(GRACE_S),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process hung (out: {out!r}); stderr tail: {err[-1500:]}")
    assert proc.returncode == 0, (proc.returncode, out, err[-3000:])  # -11: SIGSEGV
    assert "main raised" not in out, (out, err[-3000:])
    assert "listed []" in out, out  # deregistered
    assert "collected" in out, out
    for noise in ("Event loop is closed", "was never awaited", "Task was destroyed", "Traceback"):
        assert noise not in err, err[-3000:]
    return out, err


def stops(out: str) -> list[float | None]:
    found = re.search(r"^stops \[(.*)\]$", out, re.M)
    assert found is not None, out
    return [None if s == "None" else float(s) for s in found[1].split(", ") if s]


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    "how",
    ["recipe", "recipe-at-once", "recipe-in-flight", "other-task-recipe", "signal", "taskgroup"],
)
def test_a_drain_after_a_shutdown_recipe_drains_with_its_delay_and_grace(
    loop: str,
    how: str,
    tmp_path: Path,
) -> None:
    """``recipe``: cancel every other task, ``gather``, ``drain()``; ``recipe-at-once``:
    the same right after ``start()`` (the watch not yet run) without the ``gather``;
    ``recipe-in-flight``: the recipe while a call (from a thread) is in flight: its
    handler is among the tasks cancelled (``CANCELLED``); ``other-task-recipe``: the
    server started by a task that has ended; ``signal``: a SIGTERM handler cancels
    ``main``, which drains; ``taskgroup``: a ``TaskGroup`` whose task failed cancels its
    others, then ``main`` drains."""
    out, err = run_script(tmp_path, how, loop)
    assert WARNING not in err, err[-3000:]
    drained = re.search(r"^drained in ([0-9.]+)$", out, re.M)
    assert drained is not None, (out, err[-3000:])  # drain() returned, did not raise
    assert float(drained[1]) >= DELAY_S * 0.9, out  # its drain_delay_s waited
    graces = stops(out)
    assert graces and set(graces) == {GRACE_S}, out  # stopped with its grace only
    if how == "recipe-in-flight":
        assert "call ended CANCELLED" in out, out


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["returns", "recipe-then-returns", "other-task-returns"])
def test_a_loop_that_ends_undrained_still_stops_the_server(
    loop: str,
    how: str,
    tmp_path: Path,
) -> None:
    """``returns``: ``main`` returns after ``start()``; ``recipe-then-returns``: every
    other task cancelled from ``main`` (the watch too), no drain, then ``main`` returns;
    ``other-task-returns``: the same with the server started by a task that has ended."""
    out, err = run_script(tmp_path, how, loop)
    assert err.count(WARNING) == 1, err[-3000:]
    assert stops(out)[:1] == [None], out  # stopped without grace, at the loop's end


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["serve-cancelled", "serve-left"])
def test_serve_cancelled_drains_without_the_loop_end_warning(
    loop: str,
    how: str,
    tmp_path: Path,
) -> None:
    """``serve-cancelled``: ``main`` cancels its ``serve()`` task and waits for it;
    ``serve-left``: ``main`` returns and ``asyncio.run()``'s end cancels it: it drains."""
    out, err = run_script(tmp_path, how, loop)
    assert WARNING not in err, err[-3000:]
    assert ("serve cancelled" in out) == (how == "serve-cancelled"), out
    graces = stops(out)
    assert graces and graces[0] == GRACE_S, out  # serve()'s own drain stopped it


@pytest.mark.skipif(
    os.environ.get("MESHKIT_MEMCHECK") != "1",
    reason="valgrind memcheck, about 80 s of one core each: opt in with `make memcheck`"
    " (MESHKIT_MEMCHECK=1), kept out of `make test`'s time",
)
@pytest.mark.parametrize("how", ["recipe", "recipe-in-flight", "returns"])
def test_no_write_into_freed_memory_under_memcheck(how: str, tmp_path: Path) -> None:
    """valgrind memcheck (about 80 s each): before, grpc core wrote into the
    ``RPCState`` objects freed with grpc.aio's cancelled request tasks ("Invalid write
    of size 8" in cygrpc), the recipe's drain and the undrained loop end alike."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:  # asked for (MESHKIT_MEMCHECK=1): a missing valgrind fails
        pytest.fail("valgrind is not installed (apt-get install valgrind)")
    _out, err = run_script(
        tmp_path,
        how,
        "asyncio",
        timeout_s=500,
        prefix=(valgrind, "--tool=memcheck", "--error-limit=no", "--num-callers=8"),
    )
    assert "Invalid write" not in err, err[err.find("Invalid write") - 200 :][:3000]
    assert "Invalid read" not in err, err[err.find("Invalid read") - 200 :][:3000]


async def test_the_request_states_are_found_on_this_grpc() -> None:
    """The pinning finds grpc.aio's pending request states (by its tasks' coroutine names
    and closures, :data:`meshkit.server._REQUEST_CALL_TASKS`): one for the generic
    handler, one per registered method; a grpc.aio that changed them fails here, not by
    writing into freed memory now and then."""
    import grpc

    from meshkit.server import _request_states
    from tests.support.echo import add_echo

    server = grpc.aio.server()
    add, servicer = add_echo("s1", registered=True)
    add(servicer, server)
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await asyncio.sleep(0.05)  # its request tasks under way
        states = _request_states(server, asyncio.get_running_loop())
        assert states, "no RPCState found"
        assert {type(s).__name__ for s in states} == {"RPCState"}
        other = grpc.aio.server()
        other.add_insecure_port("127.0.0.1:0")
        await other.start()
        try:
            await asyncio.sleep(0.05)
            mine = {id(s) for s in _request_states(server, asyncio.get_running_loop())}
            assert mine == {id(s) for s in states}  # this server's only
        finally:
            await other.stop(None)
    finally:
        await server.stop(None)
