"""EtcdRegistry: values of the wrong shape that another writer (a tool, a script, a
hand-made ``etcdctl put``) left under the prefix are skipped, not taken apart. A real
etcd node."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from meshkit.discovery import EtcdOptions, EtcdRegistry
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


_ODD: dict[str, dict[str, Any]] = {
    "tags-a-string": {"tags": "v2"},
    "tags-an-object": {"tags": {"v2": 1}},
    "meta-a-list": {"meta": [["zone", "a"]]},
    "port-a-float": {"port": 50051.9},
    "port-a-string": {"port": "50051"},
    "port-a-bool": {"port": True},
    "weight-a-float": {"weight": 2.5},
    "weight-zero": {"weight": 0},
}


@pytest.mark.parametrize("odd", list(_ODD.values()), ids=list(_ODD))
async def test_a_foreign_value_of_the_wrong_shape_is_skipped(
        node: EtcdCluster, registry: EtcdRegistry, odd: dict[str, Any]) -> None:
    """A value whose tags are no JSON list, meta no object, or port or weight no JSON
    integer is skipped by a watch and by snapshot() (logged), the rest listed; they were
    converted instead: tags "v2" listed as the tags ('v', '2') (a tag filter on "v2"
    dropped the instance), an object its keys, a list of pairs became meta, port
    50051.9 became 50051, "50051" and true (port 1) were taken, weight 2.5 became 2 and
    0 became 1."""
    service = unique_service()
    good = make_instance(service, 1)
    await registry.register(good)
    value = {"service": service, "instance_id": "odd", "host": "127.0.0.1", "port": 7,
             "tags": [], "meta": {}, "weight": 1, **odd}
    await asyncio.to_thread(node.post, 0, "/kv/put", {
        "key": _b64(f"/meshkit/services/{service}/odd".encode()),
        "value": _b64(json.dumps(value).encode())})
    watcher = Collector(registry, service)
    assert await watcher.next() == {good}
    await watcher.stop()
    assert (await registry.snapshot(service)).live == {good}


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"orderd"', b"7", b"null"])
async def test_a_foreign_value_that_is_no_json_object_is_skipped(
        node: EtcdCluster, registry: EtcdRegistry, raw: bytes) -> None:
    """A value that is JSON but no object is skipped like any other unusable value (the
    watch goes on with the rest); it must not end the watch's reader."""
    service = unique_service()
    good = make_instance(service, 1)
    await registry.register(good)
    await asyncio.to_thread(node.post, 0, "/kv/put", {
        "key": _b64(f"/meshkit/services/{service}/odd".encode()), "value": _b64(raw)})
    watcher = Collector(registry, service)
    assert await watcher.next() == {good}
    other = make_instance(service, 2)
    await registry.register(other)
    await watcher.until_set({good, other})
    await watcher.stop()


async def test_an_unusable_value_is_warned_of_once_by_error_type(
        node: EtcdCluster, registry: EtcdRegistry) -> None:
    """An unusable value is warned of once (then at most every 60 s while it stays so),
    naming its key and the error's type, as the Consul and local registries do: it was
    warned of at every read, so each pass of ``meshkit prometheus-targets --watch`` (every
    5 s) and each full read of every watch logged it again, without saying what was
    wrong with it."""
    service = unique_service()
    await registry.register(make_instance(service, 1))
    key = f"/meshkit/services/{service}/odd"
    await asyncio.to_thread(node.post, 0, "/kv/put", {
        "key": _b64(key.encode()), "value": _b64(b'{"service": "x", "tags": "v2"}')})
    with capture_logs() as logs:
        for _ in range(3):
            await registry.snapshot(service)
        watcher = Collector(registry, service)
        await watcher.next()
        await watcher.stop()
    skipped = [e for e in logs if e["event"] == "skipping unusable etcd entry"]
    assert len(skipped) == 1, skipped
    assert skipped[0]["key"] == key and skipped[0]["error"] == "KeyError"
