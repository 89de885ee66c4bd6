"""A SIGTERM drain ends the process once ``grace_s`` is up, even while a plain-function
handler is still blocked (the server's handler threads were joined at interpreter exit, so
the process outlived its drain by as long as the handler blocked, until the supervisor's
SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    import grpc
    import meshkit

    def stuck(request, context):
        time.sleep(60)  # a database call that hangs
        return b"late"

    def add(_servicer, server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Stuck", {"Call": grpc.unary_unary_rpc_method_handler(stuck)}),))

    async def main():
        calls = []
        async def started(server):
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            calls.append(channel.unary_unary("/t.Stuck/Call")(b"x", timeout=120))
            await asyncio.sleep(0.5)  # the call is in the handler
            print("READY", flush=True)
        await meshkit.serve("stuck", [(add, None)], registry=sys.argv[1],
                            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                         grace_s=1.0, admin=None),
                            on_started=started)
        print("DRAINED", flush=True)

    meshkit.run(main())
""")


def test_sigterm_drain_exits_while_a_handler_is_blocked(tmp_path: Path) -> None:
    """SIGTERM with a plain handler blocked for 60 s: status 0 well before that."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, f"local://{tmp_path}"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "READY" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the process outlived its drain by the blocked handler's time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "DRAINED" in out, err
    assert proc.returncode == 0, err
    assert took < 30, took
