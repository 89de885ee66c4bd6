"""orderd refuses a bad setting before it waits for anything.

``--rate-limit-storage bogus://x`` and ``--host 'bad host'`` were checked only once
orderd had opened its store (waiting up to ``--db-wait-s``, 60 s by default, for a
database still starting) and waited up to ``--wait-users-s`` (10 s) for a user service:
a typo in a deployment showed only after those waits, or a crash loop's worth of them.
Both are now checked first: here with ``--wait-users-s 60`` and no user service, the
process ends (status 1, the one line) well before the wait would have."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("bad", [("--rate-limit-storage", "bogus://x"),
                                 ("--host", "bad host")],
                         ids=["rate-limit-storage", "host"])
async def test_a_bad_setting_is_refused_before_the_user_service_wait(
        bad: tuple[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "DATABASE_URL", "ECOM_"))}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.ecom.order_service", "--insecure", *bad,
        "--db", f"sqlite:///{tmp_path / 'orders.db'}", "--wait-users-s", "60",
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err_b = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    took = time.monotonic() - t0
    err = err_b.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert took < 40, f"{took:.1f} s: it waited for the user service first"
    assert "no user service endpoint yet" not in err, err[-2000:]
    assert repr(bad[1]) in err.strip().splitlines()[-1], err[-2000:]
