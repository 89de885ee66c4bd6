"""LocalRegistry: one instance id registered by two services.

The local registry's file keys an entry by its instance id alone (the ``instances`` table's
primary key, which older meshkit versions sharing the file read and write), so a second
service registering an id another service holds replaced that service's entry: one pod
serving two services under ``instance_id=$POD_NAME`` (which etcd keeps apart, keying by
``<service>/<id>``) made the first service vanish from discovery without an error, its
heartbeat cancelled when both shared the registry, or its entry flipping between the two
services at every heartbeat when each process had its own. A register of an id a live
entry of another service holds is now refused (``RegistryError`` naming the id and that
service), and the entry in place keeps its service. Re-registering an id for the same
service (a restarted process) still replaces it, and an id whose entry was deregistered
or expired is free again. Real SQLite files; two ``LocalRegistry`` objects on one
directory stand for two processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.errors import RegistryError

_FAST = dict(ttl_s=0.6, heartbeat_interval_s=0.15, poll_interval_s=0.05)


def _inst(service: str, port: int, instance_id: str = "pod-1") -> Instance:
    return Instance(service=service, instance_id=instance_id, host="127.0.0.1", port=port)


async def test_an_id_held_by_another_process_service_is_refused(tmp_path: Path) -> None:
    one = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    two = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    try:
        a = _inst("ledger", 9101)
        await one.register(a)
        with pytest.raises(RegistryError) as err:
            await two.register(_inst("billing", 9102))
        assert "'pod-1'" in str(err.value) and "'ledger'" in str(err.value), err.value
        # a few TTLs of heartbeats on both sides: ledger's entry stays ledger's
        await asyncio.sleep(1.5)
        assert await two.instances("ledger") == frozenset({a})
        assert await one.instances("billing") == frozenset()
    finally:
        await one.close()
        await two.close()


async def test_an_id_held_by_another_service_of_the_same_registry_is_refused(
        tmp_path: Path) -> None:
    reg = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    try:
        a = _inst("ledger", 9101)
        await reg.register(a)
        with pytest.raises(RegistryError) as err:
            await reg.register(_inst("billing", 9102))
        assert "'pod-1'" in str(err.value) and "'ledger'" in str(err.value), err.value
        await asyncio.sleep(1.5)  # ledger's heartbeat still runs: its entry outlives its TTL
        assert await reg.instances("ledger") == frozenset({a})
        assert await reg.instances("billing") == frozenset()
        # billing's failed register left nothing that its deregister could take away
        await reg.deregister(_inst("billing", 9102))
        assert await reg.instances("ledger") == frozenset({a})
    finally:
        await reg.close()


async def test_the_same_service_may_take_its_id_over(tmp_path: Path) -> None:
    """A restarted process registers its instance id again (with a new port): replaced."""
    one = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    two = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    try:
        await one.register(_inst("ledger", 9101))
        await one.close()  # deregisters
        moved = _inst("ledger", 9201)
        await two.register(moved)
        assert await two.instances("ledger") == frozenset({moved})
        again = dataclasses.replace(moved, port=9301)
        other = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
        try:
            await other.register(again)  # a live entry of the same service: replaced
            assert await other.instances("ledger") == frozenset({again})
        finally:
            await other.close()
    finally:
        await two.close()


async def test_a_freed_id_may_go_to_another_service(tmp_path: Path) -> None:
    one = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    two = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    try:
        a = _inst("ledger", 9101)
        await one.register(a)
        await one.deregister(a)
        b = _inst("billing", 9102)
        await two.register(b)  # deregistered: free
        assert await one.instances("billing") == frozenset({b})
        assert await one.instances("ledger") == frozenset()
    finally:
        await one.close()
        await two.close()


async def test_a_second_server_with_the_id_fails_to_start_and_leaves_the_first(
        tmp_path: Path) -> None:
    """Two MeshServers of one process (one pod, two services, ``instance_id=$POD_NAME``):
    the second's start() fails with the registry's error, and undoing it (which
    withdraws the registration it attempted) leaves the first server's entry listed."""
    import meshkit

    reg = LocalRegistry(LocalOptions(path=tmp_path, **_FAST))  # type: ignore[arg-type]
    opts = meshkit.ServeOptions(insecure=True, instance_id="pod-1", drain_delay_s=0,
                                grace_s=0.5)
    first = meshkit.MeshServer("ledger", [], registry=reg, options=opts)
    second = meshkit.MeshServer("billing", [], registry=reg, options=opts)
    try:
        held = await asyncio.wait_for(first.start(), 10)
        with pytest.raises(RegistryError) as err:
            await asyncio.wait_for(second.start(), 10)
        assert "'ledger'" in str(err.value), err.value
        await asyncio.sleep(1.5)  # 2.5 TTLs: the first one's heartbeat still runs
        assert await reg.instances("ledger") == frozenset({held})
        assert await reg.instances("billing") == frozenset()
    finally:
        await asyncio.wait_for(second.drain(), 10)
        await asyncio.wait_for(first.drain(), 10)
        await reg.close()
