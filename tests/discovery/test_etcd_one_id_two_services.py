"""EtcdRegistry: one registry holding one instance id for two services (a pod serving two
services under ``instance_id=$POD_NAME`` through one shared registry) keeps both, as
etcd's keyspace ``<prefix><service>/<id>`` keeps them apart. A real etcd node."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's tests (each uses services of its own)."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def registry(node: EtcdCluster) -> AsyncIterator[EtcdRegistry]:
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=2,
                                   keepalive_interval_s=0.2, request_timeout_s=1.0,
                                   operation_timeout_s=1.0, backoff_base_s=0.05,
                                   backoff_max_s=0.3))
    yield reg
    await reg.close()


async def _exists(registry: EtcdRegistry, key: bytes) -> bool:
    data = await registry._post("/kv/range", {"key": base64.b64encode(key).decode(),
                                              "keys_only": True})
    return bool(data.get("kvs"))


async def _lease_keys(registry: EtcdRegistry) -> set[bytes]:
    """The keys attached to the registry's instances' lease now (etcd's own view)."""
    data = await registry._post("/lease/timetolive", {"ID": str(registry._lease),
                                                      "keys": True})
    assert int(data.get("TTL") or 0) > 0, data
    return {base64.b64decode(k) for k in data.get("keys") or ()}


async def test_one_id_registered_for_two_services_keeps_both(registry: EtcdRegistry) -> None:
    """Registering ``Instance(service="b", instance_id="pod-1")`` through a registry that
    holds ``Instance(service="a", instance_id="pod-1")`` moved the id: a's key and
    last-seen record were deleted, so service a silently left discovery (and the lease's
    keep-alive, its loss and the key check knew b only). Now both are listed with their
    records, both keys live under the one lease and both come back after a lease loss;
    deregistering one leaves the other registered and kept alive."""
    first, second = unique_service(), unique_service()
    a = make_instance(first, 1, instance_id="pod-1")
    b = make_instance(second, 2, instance_id="pod-1")
    await registry.register(a)
    await registry.register(b)
    assert (await registry.snapshot(first)).live == {a}
    assert (await registry.snapshot(second)).live == {b}
    for inst in (a, b):
        assert await _exists(registry, registry._seen_key(inst)), inst.service
    assert await _lease_keys(registry) == {registry._key(a), registry._key(b)}

    lease = registry._lease
    await registry._post("/lease/revoke", {"ID": str(lease)})  # lease loss: both go
    assert (await registry.snapshot(first)).live == set()

    async def both_back() -> bool:
        return (registry._lease not in (None, lease)
                and (await registry.snapshot(first)).live == {a}
                and (await registry.snapshot(second)).live == {b})

    await until(both_back, timeout_s=5, what="both put again under a new lease")

    await registry.deregister(a)
    assert (await registry.snapshot(first)).live == set()
    assert await registry.failing(first) == set()  # its record deleted too
    assert (await registry.snapshot(second)).live == {b}
    assert await _exists(registry, registry._seen_key(b))
    assert await _lease_keys(registry) == {registry._key(b)}  # still kept alive

    await registry.deregister(b)
    assert (await registry.snapshot(second)).live == set()
    assert registry._lease is None
