"""An etcd watch's retry backoff counted every broken stream of the watch's life: the
count went back to 0 only when a stream was left for being quiet, so a watch of a busy
service (events flowing, never quiet) whose member restarted now and then retried each
new break later than the last, up to ``backoff_max_s``, though every stream between had
worked for hours. A stream that was established and lived longer than the longest
backoff now makes its break a first failure (base delay), as Consul's watch restarts its
backoff after a successful blocking query. A real etcd behind a TCP proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(120)

FAST: dict[str, Any] = {"ttl_s": 30, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.5}
_CUTS = 4  # before the fix: attempts 1..4, above the 2 allowed


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path) as cluster:
        yield cluster


async def test_a_stream_that_worked_restarts_the_backoff(own_node: EtcdCluster) -> None:
    service = unique_service()
    a = make_instance(service, 1)
    owner = EtcdRegistry(EtcdOptions(endpoints=tuple(own_node.endpoints), **FAST))
    await owner.register(a)
    async with TcpProxy("127.0.0.1", own_node.members[0].client_port) as proxy:
        reader = EtcdRegistry(EtcdOptions(endpoints=(proxy.address,), **FAST))
        attempts: list[int] = []
        delay = reader._backoff_delay

        def recording(attempt: int) -> float:
            attempts.append(attempt)
            return delay(attempt)

        reader._backoff_delay = recording  # type: ignore[method-assign]
        try:
            watcher = Collector(reader, service)
            assert await watcher.next(timeout_s=15) == {a}
            for n in range(_CUTS):
                # each stream lives well past backoff_max_s (0.5 s; its reconnect takes
                # at most that backoff and a connect) and is never quiet for ttl_s: no
                # quiet leave resets the count
                await asyncio.sleep(2.0)
                seen = len(attempts)
                await proxy.stop()
                await proxy.start()
                for _ in range(150):  # the break noticed: a retry's delay drawn
                    if len(attempts) > seen:
                        break
                    await asyncio.sleep(0.1)
                assert len(attempts) > seen, f"cut {n} not noticed"
            await watcher.stop()
        finally:
            await reader.close()
            await owner.close()
    # one failure per cut, each a first one (2: a retry that failed on a loaded box)
    assert max(attempts) <= 2, attempts
