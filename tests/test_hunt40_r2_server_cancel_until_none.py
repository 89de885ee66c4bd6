"""Review of a63dae04: a shutdown loop that cancels every other task until none is left
never ended.

a63dae04 made the loop-end watch of a started :class:`~meshkit.MeshServer` put another
in its place whenever a task of the loop cancels it (the "cancel every other task, then
drain()" recipe is not the loop's end). A shutdown written as a loop, cancelling and
gathering every other task until none remains (tasks a cancel sets off are cancelled in
turn), then found the new watch each round: 51 rounds of 51 still listed
``meshkit-loop-end-<service>``, so such a ``main`` never reached its ``drain()``. Now a
watch put in place by such a cancel, cancelled from the loop again, ends without another:
the loop ends in a few rounds and the drain that follows drains with its delay and grace,
without the loop-end warning.

Each case runs in a subprocess (a hang is a failure with the output so far).
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

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
DELAY_S = 0.5
GRACE_S = 3.0

SCRIPT = textwrap.dedent("""
    import asyncio, gc, sys, time
    import grpc.aio._server as grpc_server
    import meshkit
    from tests.support.echo import add_echo
    from tests.support.registries import QueueRegistry

    loop, delay_s, grace_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    stops = []
    real_stop = grpc_server.Server.stop

    async def stop(self, grace):
        stops.append(grace)
        return await real_stop(self, grace)

    grpc_server.Server.stop = stop

    async def main():
        opts = meshkit.ServeOptions(insecure=True, instance_id="u1", drain_delay_s=delay_s,
                                    grace_s=grace_s, admin=None, host="127.0.0.1")
        server = meshkit.MeshServer("until", [add_echo("u1")], registry=QueueRegistry(),
                                    options=opts)
        await server.start()
        await asyncio.sleep(0.2)
        me = asyncio.current_task()
        rounds = 0
        while tasks := [t for t in asyncio.all_tasks() if t is not me]:
            rounds += 1
            if rounds > 20:
                print("left", sorted({t.get_name() for t in tasks}), flush=True)
                break
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        print("rounds", rounds, flush=True)
        began = time.monotonic()
        await server.drain()
        print("drained in", round(time.monotonic() - began, 2), flush=True)

    try:
        meshkit.run(main(), use_uvloop=loop == "uvloop")
    except BaseException as exc:
        print("main raised", type(exc).__name__, flush=True)
    print("stops", stops, flush=True)
    gc.collect()
    print("collected", flush=True)
""")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cancelling_every_task_until_none_is_left_ends(loop: str) -> None:
    if loop == "uvloop":
        require_uvloop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, loop, str(DELAY_S), str(GRACE_S)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, (done.returncode, out, err[-3000:])
    assert "left" not in out, out  # a task was still there after 20 rounds
    rounds = re.search(r"^rounds (\d+)$", out, re.M)
    assert rounds is not None and int(rounds[1]) <= 5, out
    drained = re.search(r"^drained in ([0-9.]+)$", out, re.M)
    assert drained is not None, (out, err[-3000:])
    assert float(drained[1]) >= DELAY_S * 0.9, out  # its drain_delay_s waited
    assert re.search(r"^stops \[3\.0(, 3\.0)?\]$", out, re.M), out  # with its grace
    assert "collected" in out, out
    assert "server not drained before its event loop ended" not in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
