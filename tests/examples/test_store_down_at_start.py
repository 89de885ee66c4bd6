"""A service whose database cannot be reached when it starts waits for it.

The services opened their store once and exited with a StoreUnavailable traceback when
the database did not answer at that moment, though the store reconnects by itself once
open: a stack applied together (PostgreSQL still starting) began in Kubernetes'
CrashLoopBackOff, whose growing delays (up to 5 minutes) held every service down after
the database was up. They now try again every second for ``--db-wait-s`` (env
``ECOM_DB_WAIT_S``, default 60 s, the startup probe's allowance), one warning logged.
Here a directory stands where the SQLite file goes at first (the file cannot be opened:
StoreUnavailable), then is removed. (A missing directory no longer serves: SQLite never
creates it, so the store refuses it at once, naming it:
tests/examples/test_hunt44_cli_sqlite_missing_dir.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from examples.ecom._process import open_store_waiting
from examples.ecom.storage import StoreUnavailable
from tests.support.procs import children
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_a_service_waits_for_its_database_at_start(tmp_path: Path) -> None:
    db_file = tmp_path / "summary.db"
    db_file.mkdir()  # the file cannot be opened while a directory stands there
    env = {"MESHKIT_REGISTRY": f"local://{tmp_path / 'registry'}"}
    async with children(tmp_path / "logs", env) as kids:
        child = await kids.start(
            "examples.ecom.projection_service", "--insecure",
            "--db", f"sqlite:///{db_file}", "--nats-url", "nats://127.0.0.1:1")
        await until(lambda: child.proc.returncode is not None
                    or "store unavailable at start" in child.stderr(), timeout_s=30,
                    what="the first attempt at the store")
        await asyncio.sleep(0.3)  # a retry or two
        assert child.proc.returncode is None, child.stderr()[-2000:]  # before: exited 1
        db_file.rmdir()
        await child.wait_line("READY ", timeout_s=20)
        events = [json.loads(line).get("event") for line in child.stderr().splitlines()
                  if line.startswith("{")]
        assert events.count("store unavailable at start, retrying") == 1, events


async def test_the_wait_ends_at_its_bound_when_the_database_does_not_answer() -> None:
    """A database that takes connections and never answers (a stalled proxy, a server
    hung): each attempt ran to the store's own connect timeout (5 s) however little of
    --db-wait-s was left, so the wait overran it by up to that much, and with orderd's
    wait for a userd after it, the pod's startup probe budget that 442946a sized the
    ConfigMap's ECOM_DB_WAIT_S for. An attempt now gets what is left of the wait."""
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await open_store_waiting(f"postgresql://app:pw@127.0.0.1:{port}/shop", 0.5)
        assert time.monotonic() - t0 < 3.5  # before: 5 s, the connect timeout
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
