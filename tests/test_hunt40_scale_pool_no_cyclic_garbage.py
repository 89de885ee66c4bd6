"""The endpoints a discovery answer removes are freed by reference counting: none is left
for the cyclic garbage collector.

The README's tuning note advises ``gc.freeze()`` for a client with large pools, after
its endpoints arrive and after a large update: each endpoint costs about 35 objects the
collector tracks (grpc.aio's channel with its four interceptor lists and call WeakSet,
the connectivity watch task and its coroutines, the endpoint and its counters), and a
full collection of a heap with 20,000 endpoints took 200-430 ms. Frozen objects that
later become cyclic garbage are never collected (until ``gc.unfreeze()``), so the advice
holds only while a removed endpoint leaves no cycle behind: pinned here. With the
collector off, 60 endpoints are replaced by 60 others; once the old sub-channels have
drained, only the new grpc.aio channels and the tasks of the pool remain, before any
collection as after one.
"""

from __future__ import annotations

import asyncio
import gc

import grpc.aio._channel as grpc_channel
import pytest

import meshkit
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

N = 60


def _inst(i: int, port: int) -> Instance:
    return Instance(service="big", instance_id=f"i{i:04d}", host="127.0.0.1", port=port)


def _channels() -> int:
    return sum(type(o) is grpc_channel.Channel for o in gc.get_objects())


async def test_replaced_endpoints_leave_no_cyclic_garbage() -> None:
    registry = QueueRegistry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        pool.apply(frozenset(_inst(i, 9) for i in range(N)))
        await until(lambda: len(pool.conns) == N, timeout_s=30, what="the first endpoints")
        gc.collect()
        base = _channels()
        assert base >= N
        gc.disable()
        try:
            pool.apply(frozenset(_inst(i + N, 10) for i in range(N)))
            new = {f"i{i + N:04d}" for i in range(N)}
            await until(
                lambda: set(pool.conns) == new and not pool._draining,
                timeout_s=30,
                what="the old sub-channels drained and closed",
            )
            await asyncio.sleep(0.2)  # their last callbacks run
            before = _channels()
            gc.collect()
            after = _channels()
        finally:
            gc.enable()
        assert before == after == base, (base, before, after)
