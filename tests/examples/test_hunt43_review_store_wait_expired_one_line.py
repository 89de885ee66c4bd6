"""An ecom service whose database never comes up within ``--db-wait-s`` ends with one
line naming why, as one whose database refuses it does.

4c5398ef made a refusing database (a role that does not exist) end the service with
``cannot open the store: <cause>``, status 1, no traceback, but the commonest failure at
the start, the database not reachable at all until the wait runs out, still ended in
a traceback whose last line was ``StoreUnavailable: the postgresql store is
unavailable``: no cause (connection refused, the host), all ``meshkit demo`` shows of a
service's log. The URL's password must not be shown either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SECRET = "h43-review-not-shown-pw"


def _refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("service", ["projection_service", "outbox_relay"],
                         ids=["summaryd", "relay"])
def test_a_database_never_up_ends_the_service_in_one_line(tmp_path: Path,
                                                          service: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "DATABASE_URL", "ECOM_"))}
    env["MESHKIT_REGISTRY"] = f"local://{tmp_path / 'registry'}"
    url = f"postgresql://app:{SECRET}@127.0.0.1:{_refused_port()}/shop"
    proc = subprocess.run(
        [sys.executable, "-m", f"examples.ecom.{service}",
         *(() if service == "outbox_relay" else ("--insecure",)),
         "--db", url, "--db-wait-s", "2", "--nats-url", "nats://127.0.0.1:1"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=90, check=False)
    err = proc.stderr.decode(errors="replace")
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cannot open the store"), last
    assert "2" in last and "refused" in last.lower(), last  # the wait and the cause
    assert SECRET not in err and SECRET not in out
    assert "store cannot be opened" in err  # the log line, for a log collector
