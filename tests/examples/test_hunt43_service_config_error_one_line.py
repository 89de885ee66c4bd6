"""An ecom service started with a bad setting ends with one line, not a traceback.

``python -m examples.ecom.user_service --host 'bad host'`` (or a ``--cert-dir`` without
the certificates, ``--user-cache bogus://x``, ``--rate-limit-storage bogus://x``) died
with a Python traceback of a dozen frames ending in meshkit's ``ConfigError``, whose
message (the bad value quoted) was all the user needed. The services now end such a
start with that message on one line, prefixed by the command, status 1; the operators'
log keeps the error as an event."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

_CASES = {
    "userd-host": ("user_service", ("--insecure", "--host", "bad host"),
                   "host must be an IP address"),
    "userd-certs": ("user_service", ("--cert-dir", "{tmp}/no-certs"),
                    "ca.pem is missing"),
    "userd-cache": ("user_service", ("--insecure", "--user-cache", "bogus://x"),
                    "user cache uri must be"),
    "orderd-limits": ("order_service", ("--insecure", "--rate-limit-storage", "bogus://x"),
                      "unknown storage_uri 'bogus://x'"),
    "summaryd-certs": ("projection_service", ("--cert-dir", "{tmp}/no-certs"),
                       "ca.pem is missing"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
async def test_a_bad_setting_ends_the_service_in_one_line(case: str, tmp_path: Path) -> None:
    module, extra, expected = _CASES[case]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "DATABASE_URL", "ECOM_"))}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"examples.ecom.{module}", *args,
        "--db", f"sqlite:///{tmp_path / 'x.db'}", "--jwt-dir", str(tmp_path / "jwt"),
        *(("--wait-users-s", "0.5") if module == "order_service" else ()),
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err_b = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = err_b.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"python -m examples.ecom.{module}: ") and expected in last, last
