"""What the operator commands read from a registry besides watches: the services it lists
(``services()``) and the instances that died without deregistering (``failing()``), on
the local registry, the Consul agent double and a real etcd node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshkit.discovery import ConsulOptions, ConsulRegistry, LocalOptions, LocalRegistry
from tests.discovery.consul_double import ConsulDouble
from tests.discovery.test_consul import FAST, make_instance
from tests.support.wait import until


async def check_listing(alive: Any, dying: Any) -> None:
    """``alive`` and ``dying`` share one registry: orderd-1 stays, orderd-2 dies (its
    registry is closed without deregistering, as SIGKILL would), userd-1 is drained."""
    stays, dies, drained = make_instance("orderd", 1), make_instance("orderd", 2), \
        make_instance("userd", 1)
    await alive.register(stays)
    await dying.register(dies)
    await alive.register(drained)
    await until(lambda: _services(alive, {"orderd", "userd"}), what="both services listed")
    await alive.deregister(drained)
    assert await alive.failing("orderd") == frozenset()
    await dying.close()
    await until(lambda: _failing(alive, {"orderd-2"}), timeout_s=10,
                what="orderd-2 reported failing")
    assert await alive.failing("userd") == frozenset()  # drained: gone, not failing
    assert "orderd" in await alive.services()


async def _services(reg: Any, want: set[str]) -> bool:
    return want <= set(await reg.services())


async def _failing(reg: Any, want: set[str]) -> bool:
    return {i.instance_id for i in await reg.failing("orderd")} == want


async def test_local_registry_lists_services_and_failing_instances(tmp_path: Path) -> None:
    """Local: services with an entry; a lapsed heartbeat is failing, a drain is not."""
    alive = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.5, poll_interval_s=0.05))
    dying = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.5, poll_interval_s=0.05))
    try:
        await check_listing(alive, dying)
    finally:
        await alive.close()
        await dying.close()


async def test_consul_registry_lists_services_and_failing_instances() -> None:
    """Consul (double): the catalog's services; a critical TTL check is failing, a
    deregistration is not."""
    async with ConsulDouble() as double:
        opts = ConsulOptions(**{"addr": double.addr, **FAST})
        alive, dying = ConsulRegistry(opts), ConsulRegistry(opts)
        try:
            await check_listing(alive, dying)
        finally:
            await alive.close()
            await dying.close()


async def test_etcd_registry_lists_services_and_failing_instances(tmp_path: Path) -> None:
    """etcd (real, one node): the services under the prefix; an instance whose owner died
    is failing (its last-seen record outlives its lease) while a drained one leaves at
    once."""
    from meshkit.discovery import EtcdRegistry
    from tests.support.etcd import EtcdCluster, require_etcd_binary

    cluster = EtcdCluster(require_etcd_binary(), tmp_path, size=1)
    try:
        cluster.start_blocking()
        alive = EtcdRegistry.from_uri(cluster.uri(ttl_s=1))
        dying = EtcdRegistry.from_uri(cluster.uri(ttl_s=1))
        try:
            await check_listing(alive, dying)
        finally:
            await alive.close()
            await dying.close()
    finally:
        cluster.close()
