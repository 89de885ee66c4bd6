"""``status(service).kept_endpoints`` counts the instances that ``service``'s watches keep
after a fault, not every watch's: after an agent (Consul) or a store (etcd) came back
without its state, watches of two services each keep their one instance; the registry's
status says 2, each service's 1. Each service's used to say 2 (summed over all watches,
while its ``readable`` was already per service)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


async def _each_keeps_its_own(reader: ConsulRegistry | EtcdRegistry, one: str, two: str,
                              *, timeout_s: float, what: str) -> None:
    """Once the registry keeps 2 instances in all (within ``timeout_s``), services ``one``
    and ``two`` each keep 1 and a service never watched 0."""
    await until(lambda: reader.status().kept_endpoints == 2, timeout_s=timeout_s, what=what)
    assert reader.status(one).kept_endpoints == 1
    assert reader.status(two).kept_endpoints == 1
    assert reader.status(unique_service()).kept_endpoints == 0


async def test_consul_kept_endpoints_per_service() -> None:
    """Consul: each service's status counts its own watch's kept instances."""
    one, two = unique_service(), unique_service()
    async with ConsulDouble() as double:
        opts = ConsulOptions(addr=double.addr, ttl_s=3.0, check_interval_s=2.0,
                             deregister_critical_after_s=60.0, wait_s=5.0,
                             backoff_base_s=0.05, backoff_max_s=0.2, request_timeout_s=1.0,
                             fault_grace_s=30.0)
        owner = ConsulRegistry(opts)
        reader = ConsulRegistry(opts)
        a, b = make_instance(one, 1), make_instance(two, 1)
        watchers = [Collector(reader, one), Collector(reader, two)]
        try:
            await owner.register(a)
            await owner.register(b)
            await watchers[0].until_set({a})
            await watchers[1].until_set({b})
            await owner.close()  # never registers again
            for _ in range(20):
                double.touch(one)
                double.touch(two)
            await double.stop()
            double.forget_all()
            double.reset_index(1)
            await double.start()
            await _each_keeps_its_own(reader, one, two, timeout_s=10.0,
                                      what="both watches to keep their instance")
        finally:
            for w in watchers:
                await w.stop()
            await owner.close()
            await reader.close()


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path) as cluster:
        yield cluster


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_etcd_kept_endpoints_per_service(own_node: EtcdCluster) -> None:
    """etcd: each service's status counts its own watch's kept instances."""
    fast: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0,
                            "operation_timeout_s": 4.0, "backoff_base_s": 0.05,
                            "backoff_max_s": 0.3}
    one, two = unique_service(), unique_service()
    a, b = make_instance(one, 1), make_instance(two, 1)
    owner = EtcdRegistry(EtcdOptions(endpoints=tuple(own_node.endpoints), **fast))
    await owner.register(a)
    await owner.register(b)
    await owner.close()  # dies with the store
    for i in range(20):  # the old store's revision well past a fresh one's
        await asyncio.to_thread(own_node.post, 0, "/kv/put",
                                {"key": _b64(f"/pad/{i}"), "value": ""})
    reader = EtcdRegistry(EtcdOptions(endpoints=tuple(own_node.endpoints),
                                      **{**fast, "fault_grace_s": 60.0}))
    watchers = [Collector(reader, one), Collector(reader, two)]
    try:
        await watchers[0].until_set({a}, timeout_s=15)
        await watchers[1].until_set({b}, timeout_s=15)
        own_node.kill(0)
        own_node.wipe(0)
        own_node.start_member(0)
        await own_node.wait_healthy()
        await _each_keeps_its_own(reader, one, two, timeout_s=20,
                                  what="both watches to keep their last set")
    finally:
        for w in watchers:
            await w.stop()
        await reader.close()
