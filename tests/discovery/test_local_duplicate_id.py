"""LocalRegistry: two live processes registering one instance id for one service (a
fixed ``instance_id`` in a config file copied to two replicas, a pod name reused).

The file keys an entry by its id, and a service takes its own id over (a restarted
process), so each heartbeat put back its own address: the entry flipped between the two
every heartbeat interval, clients' endpoint sets changed as often, and nothing said why.
A heartbeat that finds its live entry holding another address now warns (naming the
id, the service and both addresses; once per id and minute). Real SQLite files;
``LocalRegistry`` objects on one directory stand for processes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(30)


async def test_two_live_processes_with_one_id_are_told(tmp_path: Path) -> None:
    opts = LocalOptions(path=tmp_path, ttl_s=0.3)
    one, two = LocalRegistry(opts), LocalRegistry(opts)
    with capture_logs() as logs:
        try:
            await one.register(Instance(service="svc", instance_id="svc-1",
                                        host="127.0.0.1", port=20001))
            await two.register(Instance(service="svc", instance_id="svc-1",
                                        host="127.0.0.1", port=20002))
            for _ in range(100):
                if any("another process" in e["event"] for e in logs):
                    break
                await asyncio.sleep(0.02)
        finally:
            await one.close()
            await two.close()
    told = [e for e in logs if "another process" in e["event"]]
    assert told, [e["event"] for e in logs]
    assert told[0]["log_level"] == "warning"
    assert told[0]["instance_id"] == "svc-1" and told[0]["service"] == "svc"
    assert {told[0]["address"], told[0]["found"]} == {"127.0.0.1:20001", "127.0.0.1:20002"}
    assert len([e for e in told if e["address"] == told[0]["address"]]) == 1  # not each beat


async def test_a_process_registering_its_id_again_elsewhere_is_not_told(tmp_path: Path) -> None:
    """A register() of the same id with a new address (one process moving) is no
    duplicate: its heartbeats find their own address."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.3))
    with capture_logs() as logs:
        try:
            await reg.register(Instance(service="svc", instance_id="svc-1",
                                        host="127.0.0.1", port=20001))
            await reg.register(Instance(service="svc", instance_id="svc-1",
                                        host="127.0.0.1", port=20002))
            await asyncio.sleep(0.35)  # three heartbeats
        finally:
            await reg.close()
    assert not [e for e in logs if "another process" in e["event"]]
