"""An etcd watch's full read of 2,000 instances no longer holds the event loop for the
whole decode.

A watch reads its prefix in full when it starts, after a compaction and after a broken
stream. The answer (about 0.8 MB) was decoded, then each of the 2,000 values (base64,
JSON, an ``Instance`` built), in one step of the event loop: 25-30 ms of its CPU here (a
loaded 2-core box). Now the answer and the values are decoded, and the sets compared, in
slices of a couple of milliseconds with the loop let run in between (6-8 ms at most
between two wakeups of a probe).

Real etcd (tests/support/etcd); the instances written in transactions of 125 puts. A
probe task on the loop measures the most CPU time the loop's thread spent between two of
its wakeups while a watch makes its first set, compared with the decode of the same values
in one go, measured in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
from meshkit.discovery._etcd import _decode, _encode, _prefix_end
from tests.discovery.conformance import unique_service
from tests.discovery.test_hunt40_scale_consul_watch_stall import _longest_stall_while
from tests.support.etcd import EtcdCluster, running_etcd

pytestmark = pytest.mark.timeout(120)

N = 2000


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path) as cluster:
        yield cluster


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _inst(service: str, i: int) -> Instance:
    return Instance(
        service=service,
        instance_id=f"{service}-host{i:05d}-1",
        host=f"10.1.{i // 250}.{i % 250}",
        port=20000 + i,
        tags=("grpc", "v1"),
        meta={"zone": "eu-west-1a", "version": "1.2.3"},
    )


async def _write_all(session: aiohttp.ClientSession, endpoint: str, service: str) -> None:
    for start in range(0, N, 125):
        ops = [
            {
                "request_put": {
                    "key": _b64(f"/meshkit/services/{service}/{inst.instance_id}".encode()),
                    "value": _b64(_encode(inst).encode()),
                }
            }
            for inst in (_inst(service, i) for i in range(start, min(N, start + 125)))
        ]
        async with session.post(f"{endpoint}/v3/kv/txn", json={"success": ops}) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()


async def _decode_in_one_go(session: aiohttp.ClientSession, endpoint: str, service: str) -> float:
    """CPU seconds the old read took in the step its answer arrived: the answer decoded
    (``json.loads``), then every value."""
    prefix = f"/meshkit/services/{service}/".encode()
    async with session.post(
        f"{endpoint}/v3/kv/range",
        json={"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))},
    ) as resp:
        raw = await resp.read()
    start = time.thread_time()
    kvs = json.loads(raw.decode("utf-8"))["kvs"]
    decoded = [_decode(base64.b64decode(kv["value"])) for kv in kvs]
    assert len(decoded) == N
    return time.thread_time() - start


async def test_a_2000_instance_read_does_not_hold_the_loop(node: EtcdCluster) -> None:
    endpoint = node.endpoints[0]
    service = unique_service()
    registry = EtcdRegistry(EtcdOptions(endpoints=(endpoint,), request_timeout_s=10.0))
    try:
        async with aiohttp.ClientSession() as session:
            await _write_all(session, endpoint, service)
            one_go = statistics.median(
                [await _decode_in_one_go(session, endpoint, service) for _ in range(3)]
            )
        stalls = []
        gc.disable()  # the collector's full collections are not the watch's own work
        try:
            for _ in range(2):
                watch = registry.watch(service)
                async with asyncio.timeout(30):
                    first, stall = await _longest_stall_while(anext(watch))
                assert len(first) == N
                stalls.append(stall)
                await watch.aclose()
        finally:
            gc.enable()
        assert min(stalls) < one_go / 2, (stalls, one_go)
    finally:
        await registry.close()
