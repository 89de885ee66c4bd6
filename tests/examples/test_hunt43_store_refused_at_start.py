"""An ecom service whose database refuses it at the start (a role that does not exist, a
wrong password, a database not created) says why, in one line.

``open_store_waiting`` raised such a failure at once, as it should (waiting cannot fix
it), but as the store's own ``StoreError("the postgresql store failed")``: the process
died with a Python traceback whose last line named no cause (asyncpg's "role ... does
not exist" was only in the chained traceback above it), and ``meshkit demo
--database-url`` with a mistyped user showed just those last lines of the log: "the
postgresql store failed". Now the service logs ``store cannot be opened`` with the cause
and exits with status 1 and one line naming it, no traceback, no password (the separate
outbox relay too, whose store opens in a task: a SystemExit raised there was followed
by asyncio's "Task exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.examples.conftest import PG_URL, require_postgres

pytestmark = pytest.mark.timeout(90)

SECRET = "h43-not-shown-pw"


def _url_with_user(user: str) -> str:
    """``PG_URL`` logging in as ``user`` with the password :data:`SECRET`."""
    parts = urlsplit(PG_URL)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{SECRET}@{host}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("service", ["projection_service", "order_service", "outbox_relay"],
                         ids=["summaryd", "orderd", "relay"])
async def test_a_refusing_database_ends_the_service_with_its_cause(
        tmp_path: Path, service: str) -> None:
    await require_postgres()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "DATABASE_URL", "ECOM_"))}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"examples.ecom.{service}",
        *(() if service == "outbox_relay" else ("--insecure",)),
        "--db", _url_with_user("h43_no_such_role"), "--db-wait-s", "30",
        "--nats-url", "nats://127.0.0.1:1",
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = err_b.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cannot open the store"), last
    assert 'role "h43_no_such_role" does not exist' in last, last
    assert SECRET not in err and SECRET not in out_b.decode(errors="replace")
    assert "store cannot be opened" in err  # the log line, for a log collector


def test_a_store_url_of_no_supported_kind_ends_the_service_in_one_line(tmp_path: Path) -> None:
    """``--db mysql://...`` (a ValueError of ``open_store``, its user info hidden) is
    one line too, not a traceback."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "DATABASE_URL", "ECOM_"))}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    proc = subprocess.run(
        [sys.executable, "-m", "examples.ecom.projection_service", "--insecure",
         "--db", f"mysql://app:{SECRET}@127.0.0.1/shop", "--nats-url", "nats://127.0.0.1:1"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cannot open the store: unsupported store URL scheme 'mysql'"), last
    assert SECRET not in err
