"""Review of 7cb24a30 (an etcd watch stream that lived longer than ``backoff_max_s``
restarts the retry backoff): a member that accepts each watch stream (etcd's "created"
answer comes) and drops it soon after must still be retried later and later, not at the
base delay each time (a tight reconnect loop). Its test only covered streams that lived
long; removing the lifetime condition (a reset for any created stream) passed it.

A real etcd; each stream of the reader is broken 0.2 s after it began (a connection
error, as a member or proxy dropping it), well below ``backoff_max_s`` = 3 s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(90)

FAST: dict[str, Any] = {"ttl_s": 30, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                        "backoff_base_s": 0.01, "backoff_max_s": 3.0}
_BREAKS = 6


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()


async def test_streams_dropped_soon_after_creation_back_off(node: EtcdCluster) -> None:
    service = unique_service()
    a = make_instance(service, 1)
    owner = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    reader = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    await owner.register(a)
    attempts: list[int] = []
    created: list[bool] = []
    delay = reader._backoff_delay
    stream = reader._stream

    def recording(attempt: int) -> float:
        attempts.append(attempt)
        return delay(attempt)

    async def dropped_soon(prefix: bytes, cur: Any, queue: Any) -> None:
        try:
            async with asyncio.timeout(0.2):
                await stream(prefix, cur, queue)
        except TimeoutError:
            created.append(cur.created_at is not None)
            raise aiohttp.ServerDisconnectedError() from None

    reader._backoff_delay = recording  # type: ignore[method-assign]
    reader._stream = dropped_soon  # type: ignore[method-assign]
    try:
        watcher = Collector(reader, service)
        assert await watcher.next(timeout_s=15) == {a}
        for _ in range(600):
            if len(attempts) >= _BREAKS:
                break
            await asyncio.sleep(0.1)
        await watcher.stop()
    finally:
        await reader.close()
        await owner.close()
    assert len(attempts) >= _BREAKS, attempts
    assert sum(created) >= _BREAKS - 1, created  # the streams were established
    # a series: each break counted after the last (no reset to a first failure)
    assert attempts[:_BREAKS] == list(range(1, _BREAKS + 1)), attempts
