"""A renewed client certificate (``rebuild_sub_channels()``) on a channel to a large service
builds the new sub-channels a batch per turn of the event loop, not all in one.

The renewal built every endpoint's new sub-channel in one synchronous pass: measured
with 2,000 endpoints (plaintext), the loop was held 160-400 ms, every call in flight
waiting, at each renewal. Now the first batch is built at once (a small channel is
rebuilt as before, in the call) and the rest a batch per turn, the established
connections carrying the calls meanwhile (make-before-break): 64 a turn, 13-50 ms on
a loaded 2-core box.

Counted, not timed: the pool's ``make_channel`` records the loop turn of each build."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
import meshkit._pool
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry as _Registry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ENDPOINTS = 600
_BATCH = getattr(meshkit._pool, "BUILD_BATCH", 64)  # (main before: no batches)


def _instances(n: int, port: int = 9) -> frozenset[Instance]:
    """``n`` instances on loopback at a port nobody listens on (port 9, discard): their
    sub-channels stay connecting or failing, which is all a rebuild needs."""
    return frozenset(Instance(service="big", instance_id=f"i{i:04d}", host="127.0.0.1",
                              port=port) for i in range(n))


async def test_a_rebuild_of_a_large_pool_builds_a_batch_per_loop_turn() -> None:
    """Each endpoint of 600 gets a new sub-channel, never more than a batch in one loop
    turn; the first batch in the call itself."""
    registry = _Registry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        registry.answers.put_nowait(_instances(_ENDPOINTS))
        await until(lambda: len(pool.endpoints) == _ENDPOINTS, timeout_s=30,
                    what="every endpoint in the pool")
        before = dict(pool.conns)
        turn = [0]

        async def count_turns() -> None:
            while True:
                turn[0] += 1
                await asyncio.sleep(0)

        ticker = asyncio.get_running_loop().create_task(count_turns())
        made = pool._make_channel
        built_in: list[int] = []

        def make_channel(address: str) -> grpc.aio.Channel:
            built_in.append(turn[0])
            return made(address)

        pool._make_channel = make_channel
        try:
            ch.rebuild_sub_channels()
            in_the_call = len(built_in)
            await until(lambda: len(built_in) >= _ENDPOINTS, timeout_s=30,
                        what="every endpoint rebuilt")
        finally:
            ticker.cancel()
        assert len(built_in) == _ENDPOINTS  # each once
        per_turn: dict[int, int] = {}
        for t in built_in:
            per_turn[t] = per_turn.get(t, 0) + 1
        assert max(per_turn.values()) <= _BATCH, (
            f"{max(per_turn.values())} sub-channels built in one loop turn")
        assert in_the_call == _BATCH
        await until(lambda: all(pool.conns[k] is not before[k] for k in before),
                    timeout_s=30, what="every endpoint on its new sub-channel")


async def test_endpoints_that_leave_or_a_renewal_again_during_a_rebuild() -> None:
    """An endpoint that leaves before its turn is not rebuilt (its sub-channel drains as
    any that left); a second renewal while one is under way starts over, so every
    endpoint still there ends on a sub-channel of the second; each is built for the
    latest renewal at most once after it."""
    registry = _Registry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        everyone = _instances(_ENDPOINTS)
        registry.answers.put_nowait(everyone)
        await until(lambda: len(pool.endpoints) == _ENDPOINTS, timeout_s=30,
                    what="every endpoint in the pool")
        made = pool._make_channel
        built: list[str] = []

        def make_channel(address: str) -> Any:
            built.append(address)
            return made(address)

        pool._make_channel = make_channel
        ch.rebuild_sub_channels()
        first = dict(pool.conns)
        # half of them leave (the last ones by id: not rebuilt yet), in the same turn
        kept = frozenset(i for i in everyone if i.instance_id < f"i{_ENDPOINTS // 2:04d}")
        pool.apply(kept)
        ch.rebuild_sub_channels()  # and the certificate is renewed again
        mark = len(built)
        await until(lambda: all(pool.conns[k] is not first[k] for k in pool.conns),
                    timeout_s=30, what="every endpoint on a sub-channel of the second")
        await asyncio.sleep(0.2)  # nothing more comes
        assert len(pool.endpoints) == _ENDPOINTS // 2
        assert len(built) - mark <= _ENDPOINTS // 2
        assert len(built) <= 2 * _BATCH + _ENDPOINTS // 2
