"""The "cancel every task, then drain()" shutdown recipe, and the loop-end stop of a server
never drained (tests/test_hunt39_threads_undrained_server_loop_end.py) beside it.

A common way to shut an asyncio service down, inside ``main()`` (or a shutdown task a
signal handler starts)::

    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.drain()

Before: the task :meth:`MeshServer.start` leaves to stop a server its event loop ends
undrained took that cancel for the loop's end (``asyncio.run()``'s sweep): it logged
"server not drained before its event loop ended", stopped the server without grace and
marked it draining, so the ``drain()`` that followed returned at once, without its
``drain_delay_s`` or ``grace_s``. Without the ``gather`` (the drain called at once) the
drain waited its ``drain_delay_s`` but then raised ``CancelledError`` into ``main()``
(the recipe had cancelled grpc.aio's own serving task, whose end ``server.stop()``
awaits), and the process ended with that traceback.

Now the watch tells the loop's end by who cancels it: ``asyncio.run()`` cancels the
tasks left from outside the loop (no loop running), a recipe from inside it; cancelled
from inside, the watch ends (the recipe's ``gather`` returns) and a new one takes its
place, so a loop that still ends undrained stops the server. A drain whose
``server.stop()`` meets grpc.aio's cancelled serving task stops it again, with its grace.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.skips import require_uvloop

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[1]
WARNING = "server not drained before its event loop ended"
DELAY_S = 1.0
GRACE_S = 5.0

SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
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

    async def main():
        if how.startswith("serve"):
            started = asyncio.Event()
            serving = asyncio.create_task(meshkit.serve(
                "recipe", [add_echo("r1")], registry=registry, options=opts,
                on_started=lambda _: started.set()))
            await started.wait()
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
        if how == "returns":
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
""")


def run_script(tmp_path: Path, how: str, loop: str) -> tuple[str, str]:
    if loop == "uvloop":
        require_uvloop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "reg"), how, loop, str(DELAY_S),
         str(GRACE_S)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process hung (out: {out!r}); stderr tail: {err[-1500:]}")
    assert proc.returncode == 0, (out, err[-3000:])
    assert "main raised" not in out, (out, err[-3000:])
    assert "listed []" in out, out  # deregistered
    for noise in ("Event loop is closed", "was never awaited", "Task was destroyed",
                  "Traceback"):
        assert noise not in err, err[-3000:]
    return out, err


def stops(out: str) -> list[float | None]:
    found = re.search(r"^stops \[(.*)\]$", out, re.M)
    assert found is not None, out
    return [None if s == "None" else float(s) for s in found[1].split(", ") if s]


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["recipe", "recipe-at-once", "other-task-recipe"])
def test_cancel_every_task_then_drain_drains_with_its_delay_and_grace(
    loop: str, how: str, tmp_path: Path,
) -> None:
    """``recipe``: cancel, ``gather``, ``drain()``; ``recipe-at-once``: cancelled right
    after ``start()`` (the watch not yet run) and drained without waiting for the tasks
    cancelled; ``other-task-recipe``: the server started by a task that has ended."""
    out, err = run_script(tmp_path, how, loop)
    assert WARNING not in err, err[-3000:]
    drained = re.search(r"^drained in ([0-9.]+)$", out, re.M)
    assert drained is not None, (out, err[-3000:])  # drain() returned, did not raise
    assert float(drained[1]) >= DELAY_S * 0.9, out  # its drain_delay_s waited
    graces = stops(out)
    assert graces and set(graces) == {GRACE_S}, out  # stopped with its grace only


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["returns", "recipe-then-returns", "other-task-returns"])
def test_a_loop_that_ends_undrained_still_stops_the_server(
    loop: str, how: str, tmp_path: Path,
) -> None:
    """``returns``: ``main`` returns after ``start()``; ``recipe-then-returns``: the tasks
    cancelled from ``main`` (the watch too), no drain, then ``main`` returns: the watch
    that took the cancelled one's place stops it; ``other-task-returns``: the same with
    the server started by a task that has ended."""
    out, err = run_script(tmp_path, how, loop)
    assert err.count(WARNING) == 1, err[-3000:]
    assert stops(out)[:1] == [None], out  # stopped without grace, at the loop's end


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how", ["serve-cancelled", "serve-left"])
def test_serve_cancelled_drains_without_the_loop_end_warning(
    loop: str, how: str, tmp_path: Path,
) -> None:
    """``serve-cancelled``: ``main`` cancels its ``serve()`` task and waits for it;
    ``serve-left``: ``main`` returns and ``asyncio.run()``'s end cancels it: it drains."""
    out, err = run_script(tmp_path, how, loop)
    assert WARNING not in err, err[-3000:]
    assert ("serve cancelled" in out) == (how == "serve-cancelled"), out
    graces = stops(out)
    assert graces and graces[0] == GRACE_S, out  # serve()'s own drain stopped it
