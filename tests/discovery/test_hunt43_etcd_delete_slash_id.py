"""An etcd watch's DELETE event of a key it holds no instance for took the instance id
from the key's last ``/`` segment: keys are ``<prefix><service>/<instance_id>`` and an
instance id may hold ``/`` (``zone-a/orderd-1``; service names may not), so the id was
cut to ``orderd-1``. What the ids deleted are for: after a replaced store (etcd restarted
on a wiped data directory) a watch keeps its last instances for ``fault_grace_s`` unless
one is deleted meanwhile; the kept ``zone-a/orderd-1`` stayed listed for the whole grace
after its key was deleted. The id is now the key past the watch's prefix. A real etcd."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}
_GRACE_S = 60.0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path) as cluster:
        yield cluster


@pytest.fixture
async def registries() -> AsyncIterator[list[EtcdRegistry]]:
    made: list[EtcdRegistry] = []
    yield made
    for reg in made:
        await reg.close()


async def test_a_kept_instance_whose_id_holds_a_slash_goes_when_its_key_is_deleted(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    service = unique_service()
    a = make_instance(service, 1, instance_id=f"zone-a/{service}-1")
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **FAST)
    owner = EtcdRegistry(opts)
    await owner.register(a)
    await owner.close()  # dies with the store: never registers again
    for i in range(20):  # the old store's revision well past a fresh one's
        await asyncio.to_thread(own_node.post, 0, "/kv/put",
                                {"key": _b64(f"/pad/{i}"), "value": ""})
    reader = EtcdRegistry(EtcdOptions(endpoints=tuple(own_node.endpoints),
                                      **{**FAST, "fault_grace_s": _GRACE_S}))
    registries.append(reader)
    watcher = Collector(reader, service)
    await watcher.until_set({a}, timeout_s=15)
    own_node.kill(0)
    own_node.wipe(0)
    own_node.start_member(0)
    await own_node.wait_healthy()
    await until(lambda: reader.status().kept_endpoints == 1, timeout_s=15,
                what="the watch to keep the last set")
    key = f"{opts.prefix}{service}/{a.instance_id}"
    # a value the watch cannot use at a's key in the new store (it holds no instance
    # for it), then deleted: the delete names a's id
    await asyncio.to_thread(own_node.post, 0, "/kv/put",
                            {"key": _b64(key), "value": _b64("not json")})
    await asyncio.to_thread(own_node.post, 0, "/kv/deleterange", {"key": _b64(key)})
    await until(lambda: reader.status().kept_endpoints == 0, timeout_s=15,
                what="the deleted instance to go before the grace period ends")
    await watcher.until_set(set(), timeout_s=15)
    await watcher.stop()
