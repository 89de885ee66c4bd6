"""userd refuses a bad serve setting before it waits for its database, as orderd and
summaryd now do (cbf617f6, e9ba1285).

userd's serve options (``--admin-host``, ``--advertise-host``) were built only once the
store had opened, after up to ``--db-wait-s`` (60 s by default) of retries at a
database that cannot be reached yet: a typo in a deployment showed a minute late. With
a database that refuses connections and ``--db-wait-s 60`` the process now ends with the
one line (status 1) well before the wait would have."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(150)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


@pytest.mark.parametrize("flag", ["--admin-host", "--advertise-host"],
                         ids=["admin-host", "advertise-host"])
async def test_a_bad_serve_setting_is_refused_before_the_database_wait(
        tmp_path: Path, flag: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "DATABASE_URL", "ECOM_"))}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    (tmp_path / "jwt").mkdir()
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.ecom.user_service", "--insecure",
        "--jwt-dir", str(tmp_path / "jwt"), flag, "bad host",
        "--db", f"postgresql://app@127.0.0.1:{_closed_port()}/shop", "--db-wait-s", "60",
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err_b = await asyncio.wait_for(proc.communicate(), 100)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    took = time.monotonic() - t0
    err = err_b.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert took < 40, f"{took:.1f} s: it waited for the database first"
    assert "'bad host'" in err.strip().splitlines()[-1], err[-2000:]
