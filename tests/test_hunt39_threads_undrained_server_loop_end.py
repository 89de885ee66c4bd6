"""A started :class:`meshkit.MeshServer` never drained before its event loop ends
(``meshkit.run(main())`` / ``asyncio.run(main())`` whose ``main`` returns, or raises, after
``start()`` without ``drain()``).

Before: the instance stayed listed in the registry (the local registry here, its TTL 60 s:
clients kept picking an address nothing answered on any more) and the grpc.aio server,
never stopped, hung the whole process for good when the garbage collector collected it
after its loop had closed (grpc.aio's ``__del__`` could not schedule its shutdown on the
closed loop, "Event loop is closed" and "coroutine 'AioServer.shutdown' was never
awaited" on stderr, then grpc's completion-queue shutdown joined its poller thread
forever): a later ``gc.collect()``, or any automatic collection, never returned.

Now the server is stopped as its loop ends, as a channel still open then is closed: a
warning says so, the instance is deregistered, the grpc server stopped, and the process
goes on and exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import meshkit
from tests.discovery.consul_double import ConsulDouble
from tests.support.echo import add_echo
from tests.support.loops import LoopThread, run
from tests.support.skips import require_uvloop

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import asyncio, gc, sys
    import meshkit
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import add_echo

    where, how, loop = sys.argv[1], sys.argv[2], sys.argv[3]

    async def main():
        opts = meshkit.ServeOptions(insecure=True, instance_id="u1", drain_delay_s=0.0,
                                    grace_s=0.5, admin=None, follow_health=how != "fixed")
        server = meshkit.MeshServer("undrained", [add_echo("u1")],
                                    registry=f"local://{where}?ttl_s=60", options=opts)
        await server.start()
        if how == "raises":
            raise RuntimeError("main failed after start")

    try:
        meshkit.run(main(), use_uvloop=loop == "uvloop")
    except RuntimeError as exc:
        print("raised", exc, flush=True)

    async def listed():
        reg = LocalRegistry(LocalOptions(path=where))
        watch = reg.watch("undrained")
        try:
            return sorted(i.instance_id for i in await anext(watch))
        finally:
            await watch.aclose()
            await reg.close()

    print("listed", asyncio.run(listed()), flush=True)
    gc.collect()
    print("collected", flush=True)
""")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("how", ["returns", "raises", "fixed"])
def test_an_undrained_server_is_stopped_and_deregistered_as_its_loop_ends(
    loop: str, how: str, tmp_path: Path,
) -> None:
    """``fixed``: ``follow_health=False`` (no health follower task of its own)."""
    if loop == "uvloop":
        require_uvloop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "reg"), how, loop], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process hung (out: {out!r}); stderr tail: {err[-1500:]}")
    assert proc.returncode == 0, err
    assert ("raised main failed after start" in out) == (how == "raises")
    assert "listed []" in out, out  # deregistered, not left for its TTL
    assert "collected" in out
    assert "server not drained before its event loop ended" in err, err
    for noise in ("Event loop is closed", "was never awaited", "Task was destroyed",
                  "Traceback"):
        assert noise not in err, err


def test_an_undrained_server_leaves_consul_as_its_loop_ends() -> None:
    """The same through Consul (the documented test double, its agent in a loop of its
    own): before, the service stayed listed (its TTL check going critical, then
    ``DeregisterCriticalServiceAfter``); now it is deregistered as the loop ends."""
    agent_loop = LoopThread()
    double = ConsulDouble()
    agent_loop.run(double.start())
    listed: list[list[str]] = []
    try:
        async def main() -> None:
            server = meshkit.MeshServer(
                "undrained", [add_echo("c1")], registry=f"consul://{double.addr}",
                options=meshkit.ServeOptions(insecure=True, admin=None, instance_id="c1",
                                             drain_delay_s=0.0))
            await server.start()
            listed.append(sorted(double.services))

        run(main())
        listed.append(sorted(double.services))
    finally:
        agent_loop.run(double.close())
        agent_loop.close()
    assert listed == [["c1"], []]
