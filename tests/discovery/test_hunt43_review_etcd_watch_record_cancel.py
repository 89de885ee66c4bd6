"""Review of 733448e5/547fd508 (etcd: readable per watched service): a watch's count and
read record were dropped at the end of its ``finally``, after awaiting its follower task.
A watch cancelled twice (``task.cancel()`` again while it winds down, as an
``asyncio.timeout`` around a cancelled ``TaskGroup`` does) left that await with
``CancelledError`` before the count was taken back: the service stayed counted as
watched and its record was kept for the registry's life (``status(service)`` reporting a
watch that no longer ran, and the record counted in the registry's "every watched
service fails"). A real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("extra_steps", [0, 1], ids=["at-once", "one-step-later"])
async def test_a_watch_cancelled_twice_drops_its_record(node: EtcdCluster,
                                                        extra_steps: int) -> None:
    options = EtcdOptions(endpoints=node.endpoints, ttl_s=3, request_timeout_s=2.0,
                          operation_timeout_s=4.0)
    service = unique_service()
    async with EtcdRegistry(options) as registry:
        await registry.register(make_instance(service, 1))
        got = asyncio.Event()

        async def consume() -> None:
            async for instances in registry.watch(service):
                if instances:
                    got.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got.wait(), 15)
        assert registry.status(service).readable is True
        task.cancel()
        for _ in range(1 + extra_steps):
            await asyncio.sleep(0)  # the watch's finally runs up to its await
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
        assert registry.status(service).readable is None  # no watch of it runs
        assert len(registry._reads) == 0, len(registry._reads)  # no record, no watch
