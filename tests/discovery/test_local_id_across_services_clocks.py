"""LocalRegistry: whether an entry of another service still holds an instance id is
judged as :meth:`LocalRegistry._read` judges liveness (module docstring, "Clocks"): on the
boot clock for a row stamped with this boot id (and time namespace), on the wall clock for
a row of another boot id or without a stamp (an older meshkit's file); an expired row not
yet collected is free. Hand-moved clocks; real SQLite files; two ``LocalRegistry`` objects
on one directory stand for two processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.errors import RegistryError
from tests.discovery.test_local_clock import HandClock

pytestmark = pytest.mark.timeout(30)

_BOOT_A = "00000000-0000-4000-8000-0000000000aa"
_BOOT_B = "00000000-0000-4000-8000-0000000000bb"


def _inst(service: str, port: int) -> Instance:
    return Instance(service=service, instance_id="pod-1", host="127.0.0.1", port=port)


def _opts(path: Path, wall: HandClock, boot: HandClock | None,
          boot_id: str | None = _BOOT_A) -> LocalOptions:
    # heartbeats far apart: the rows keep the stamps the test gave them
    return LocalOptions(path=path, ttl_s=3, heartbeat_interval_s=2.9, clock=wall,
                        boot_clock=boot, boot_id=boot_id)


async def test_an_expired_entry_of_another_service_is_taken_over(tmp_path: Path) -> None:
    wall, boot = HandClock(1_000_000.0), HandClock(5_000.0)
    one = LocalRegistry(_opts(tmp_path, wall, boot))
    two = LocalRegistry(_opts(tmp_path, wall, boot))
    try:
        await one.register(_inst("ledger", 9101))
        await one.close()  # its owner gone: the row stays until its TTL, then expired
        wall.now += 4
        boot.now += 4  # expired on both clocks, not collected (10 TTLs)
        assert await two.failing("ledger") == frozenset({_inst("ledger", 9101)})
        b = _inst("billing", 9102)
        await two.register(b)
        assert await two.instances("billing") == frozenset({b})
    finally:
        await one.close()
        await two.close()


async def test_a_row_of_this_boot_is_judged_on_the_boot_clock(tmp_path: Path) -> None:
    """The wall clock steps forward past the row's expiry; the boot clock says it is live
    (as _read says): the id is still held."""
    wall, boot = HandClock(1_000_000.0), HandClock(5_000.0)
    one = LocalRegistry(_opts(tmp_path, wall, boot))
    two = LocalRegistry(_opts(tmp_path, wall, boot))
    try:
        a = _inst("ledger", 9101)
        await one.register(a)
        wall.now += 100  # an NTP step
        boot.now += 0.5
        assert await two.instances("ledger") == frozenset({a})
        with pytest.raises(RegistryError, match="'ledger'"):
            await two.register(_inst("billing", 9102))
    finally:
        await one.close()
        await two.close()


async def test_a_row_of_another_boot_id_is_judged_on_the_wall_clock(tmp_path: Path) -> None:
    """A row stamped with another boot id (a container with a boot id of its own) is live
    on the wall clock, whatever this boot clock says."""
    wall, boot = HandClock(1_000_000.0), HandClock(5_000.0)
    one = LocalRegistry(_opts(tmp_path, wall, boot, _BOOT_A))
    two = LocalRegistry(_opts(tmp_path, wall, boot, _BOOT_B))
    try:
        a = _inst("ledger", 9101)
        await one.register(a)
        boot.now += 100  # past the row's boot expiry; the wall clock is not
        assert await two.instances("ledger") == frozenset({a})
        with pytest.raises(RegistryError, match="'ledger'"):
            await two.register(_inst("billing", 9102))
    finally:
        await one.close()
        await two.close()


def _older_file(path: Path, expires_at: float) -> None:
    """A file as an older meshkit wrote it: no boot columns, no tombstones, no last_write
    table; one row of ledger's holding pod-1."""
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / "registry.db")
    try:
        conn.execute("CREATE TABLE instances (instance_id TEXT PRIMARY KEY, service TEXT NOT"
                     " NULL, host TEXT NOT NULL, port INTEGER NOT NULL, tags TEXT NOT NULL,"
                     " meta TEXT NOT NULL, weight INTEGER NOT NULL, expires_at REAL NOT NULL)")
        conn.execute("INSERT INTO instances VALUES ('pod-1','ledger','127.0.0.1',9101,'[]',"
                     "'{}',1,?)", (expires_at,))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("boot", [True, False], ids=["boot-clock", "no-boot-clock"])
async def test_an_older_files_row_is_judged_on_the_wall_clock(tmp_path: Path,
                                                              boot: bool) -> None:
    """An older meshkit's row (no stamp): held while its wall-clock expiry is ahead,
    free after it (with or without a boot clock: the file is upgraded in place, or left
    as it is)."""
    _older_file(tmp_path, time.time() + 60)
    opts = LocalOptions(path=tmp_path, ttl_s=3, boot_clock=None if not boot else
                        LocalOptions().boot_clock)
    reg = LocalRegistry(opts)
    try:
        with pytest.raises(RegistryError, match="'ledger'"):
            await reg.register(_inst("billing", 9102))
    finally:
        await reg.close()
    expired = tmp_path / "expired"
    _older_file(expired, time.time() - 5)
    reg = LocalRegistry(LocalOptions(path=expired, ttl_s=3, boot_clock=opts.boot_clock))
    try:
        b = _inst("billing", 9102)
        await reg.register(b)
        assert await reg.instances("billing") == frozenset({b})
    finally:
        await reg.close()


async def test_a_heartbeat_leaves_an_id_another_service_took_over(tmp_path: Path) -> None:
    """Ledger's owner stalls past its TTL; billing takes the expired id over; ledger's
    next heartbeat leaves billing's entry alone (no flip between the two)."""
    wall, boot = HandClock(1_000_000.0), HandClock(5_000.0)
    fast = dict(ttl_s=1.0, heartbeat_interval_s=0.3, clock=wall, boot_clock=boot,
                boot_id=_BOOT_A)
    one = LocalRegistry(LocalOptions(path=tmp_path, **fast))  # type: ignore[arg-type]
    two = LocalRegistry(_opts(tmp_path, wall, boot))
    try:
        await one.register(_inst("ledger", 9101))
        # one's heartbeats renew on the hand clocks: stepping past a TTL expires the row
        # until its next heartbeat, as a stalled owner's
        b = _inst("billing", 9102)
        for attempt in range(5):  # a heartbeat of one's may land first: step again
            wall.now += 5
            boot.now += 5
            try:
                await two.register(b)
                break
            except RegistryError:
                if attempt == 4:
                    raise
        await asyncio.sleep(1.5)  # several of ledger's heartbeats
        assert await two.instances("billing") == frozenset({b})
        assert await two.instances("ledger") == frozenset()
    finally:
        await one.close()
        await two.close()
