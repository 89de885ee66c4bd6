"""A ``meshkit.run(main())`` whose ``main`` raises while a started :class:`meshkit.MeshServer`
was never drained exits with the traceback and status 1 on either event loop (on uvloop the
process hung for ever in asyncio's task sweep: the health follower's ``asyncio.wait_for``
swallowed the sweep's cancellation, Python 3.11, and looped on)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.skips import require_uvloop

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys
    import meshkit
    from tests.support.echo import add_echo

    async def main():
        opts = meshkit.ServeOptions(insecure=True, instance_id="x1", drain_delay_s=0.0,
                                    grace_s=0.5, admin=None)
        server = meshkit.MeshServer("exits", [add_echo("x1")], registry=sys.argv[1],
                                    options=opts)
        await server.start()
        raise RuntimeError("main failed after start")

    meshkit.run(main(), use_uvloop=sys.argv[2] == "uvloop")
""")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_main_raising_with_an_undrained_server_exits(loop: str, tmp_path: Path) -> None:
    """The process ends with status 1 and the error's traceback, within seconds."""
    if loop == "uvloop":
        require_uvloop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, f"local://{tmp_path}", loop], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _out, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("meshkit.run() never returned: the process hung at exit")
    assert proc.returncode == 1, err
    assert "RuntimeError: main failed after start" in err
