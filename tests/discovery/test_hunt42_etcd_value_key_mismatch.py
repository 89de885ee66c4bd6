"""EtcdRegistry: a value under ``<prefix><service>/<instance_id>`` that names another
service or another instance id (another writer's copy: ``etcdctl put`` of one key's value
under another key) is skipped, logged, as a value of the wrong shape is. It was taken as
it was: a watch of one service listed another service's instance, and a copy of a
registered instance's value under another key kept that instance listed after its owner
deregistered it (a drained server kept getting calls). A real etcd node."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.discovery._etcd import _encode
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, running_etcd

pytestmark = pytest.mark.timeout(30)

FAST: dict[str, Any] = {"ttl_s": 2, "request_timeout_s": 1.0, "operation_timeout_s": 1.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's tests (each uses services of its own)."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def registry(node: EtcdCluster) -> AsyncIterator[EtcdRegistry]:
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    yield reg
    await reg.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _put(node: EtcdCluster, key: str, value: str) -> None:
    await asyncio.to_thread(node.post, 0, "/kv/put",
                            {"key": _b64(key.encode()), "value": _b64(value.encode())})


async def test_another_services_value_under_a_services_key_is_skipped(
        node: EtcdCluster, registry: EtcdRegistry) -> None:
    """paymentd-1's value copied under ``orderd/orderd-9``: a watch of orderd, and its
    snapshot, list orderd's own instance only (the copy was listed, an instance whose
    ``service`` is paymentd in orderd's set, paymentd's address among orderd's
    endpoints); skipped with a warning naming the key."""
    orderd, paymentd = unique_service(), unique_service()
    own = make_instance(orderd, 1)
    other = make_instance(paymentd, 1)
    await registry.register(own)
    await registry.register(other)
    key = f"/meshkit/services/{orderd}/{orderd}-9"
    with capture_logs() as logs:
        await _put(node, key, _encode(other))  # before the watch: its first read
        watcher = Collector(registry, orderd)
        assert await watcher.next() == {own}
        third = make_instance(orderd, 3)
        await registry.register(third)
        await watcher.until_set({own, third})
        await _put(node, key, _encode(other))  # again, now as a watch event
        await registry.deregister(third)
        await watcher.until_set({own})
        assert watcher.latest == {own}
        await watcher.stop()
        assert (await registry.snapshot(orderd)).live == {own}
    assert any(e["event"] == "skipping unusable etcd entry" and e["key"] == key
               for e in logs), logs


async def test_a_copy_under_another_id_does_not_outlive_its_deregistration(
        node: EtcdCluster, registry: EtcdRegistry) -> None:
    """orderd-1's value copied under ``orderd/orderd-9`` (a copy meant to add a server,
    its id not edited): once orderd-1 is deregistered (a drain), a watch and a snapshot
    no longer list it; the copy kept it listed, its address getting calls after its
    server stopped."""
    service = unique_service()
    first, second = make_instance(service, 1), make_instance(service, 2)
    await registry.register(first)
    await registry.register(second)
    await _put(node, f"/meshkit/services/{service}/{service}-9", _encode(first))
    watcher = Collector(registry, service)
    assert await watcher.next() == {first, second}
    await registry.deregister(first)
    await watcher.until_set({second})
    await watcher.stop()
    assert (await registry.snapshot(service)).live == {second}


async def test_another_services_last_seen_record_is_not_failing_here(
        node: EtcdCluster, registry: EtcdRegistry) -> None:
    """paymentd-1's last-seen record copied under orderd's records: ``failing(orderd)``
    and orderd's snapshot do not list paymentd-1 (they did: another service's instance,
    never orderd's, reported failing for orderd, ``up == 0`` under orderd's job in
    ``meshkit prometheus-targets``)."""
    orderd, paymentd = unique_service(), unique_service()
    own = make_instance(orderd, 1)
    other = make_instance(paymentd, 1)
    await registry.register(own)
    await _put(node, f"/meshkit/services@last-seen/{orderd}/{paymentd}-1", _encode(other))
    await _put(node, f"/meshkit/services/@last-seen/{orderd}/{paymentd}-1", _encode(other))
    assert await registry.failing(orderd) == frozenset()
    assert (await registry.snapshot(orderd)).failing == frozenset()
