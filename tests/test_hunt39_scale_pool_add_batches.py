"""A discovery answer that brings a large service (a channel's first answer, a scale-out
of hundreds of instances) builds the new endpoints' sub-channels a batch per turn of the
event loop, not all in one.

The pool built every new endpoint's sub-channel while taking in the answer: measured, a
first answer of 2,000 instances held the loop 240-340 ms (each grpc.aio channel about
0.15 ms, with its connectivity task), and a scale-out by 1,000 about half that, every
call in flight on the loop waiting. Now the first batch goes into the pool with the
answer (calls may be sent at once) and the rest a batch per turn, the balancer updated
with each; a later answer decides what is still to be added.

Counted, not timed: the pool's ``make_channel`` records the loop turn of each build."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
import meshkit._pool
from meshkit.balancer import EjectingBalancer
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry as _Registry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ENDPOINTS = 600
_BATCH = getattr(meshkit._pool, "BUILD_BATCH", 64)  # (main before: no batches)


def _inst(i: int, port: int = 9) -> Instance:
    """An instance on loopback at a port nobody listens on (9, discard): its sub-channel
    stays connecting or failing, which is all the pool's bookkeeping needs."""
    return Instance(service="big", instance_id=f"i{i:04d}", host="127.0.0.1", port=port)


class _Turns:
    """The turns of the running loop, and the turn of each sub-channel built."""

    def __init__(self, pool: meshkit._pool.EndpointPool) -> None:
        self.n = 0
        self.built: list[tuple[int, str]] = []  # (turn, address)
        made = pool._make_channel

        def make_channel(address: str) -> grpc.aio.Channel:
            self.built.append((self.n, address))
            return made(address)

        pool._make_channel = make_channel
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.n += 1
            await asyncio.sleep(0)

    def most_in_one_turn(self) -> int:
        per_turn: dict[int, int] = {}
        for turn, _ in self.built:
            per_turn[turn] = per_turn.get(turn, 0) + 1
        return max(per_turn.values())

    def stop(self) -> None:
        self._task.cancel()


async def test_a_large_answer_is_built_a_batch_per_loop_turn() -> None:
    """600 new instances: the first batch in the pool with the answer, the rest a batch
    per turn, every one built once; the balancer ends with all of them."""
    registry = _Registry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        turns = _Turns(pool)
        balancer = pool.balancer
        assert isinstance(balancer, EjectingBalancer)  # (the default: outlier ejection)
        try:
            pool.apply(frozenset(_inst(i) for i in range(_ENDPOINTS)))
            assert len(pool.endpoints) == _BATCH  # these first: calls may go at once
            assert len(balancer._all) == _BATCH
            assert pool.resolved.is_set()
            await until(lambda: len(pool.endpoints) == _ENDPOINTS, timeout_s=30,
                        what="every endpoint in the pool")
        finally:
            turns.stop()
        assert len(turns.built) == _ENDPOINTS
        assert turns.most_in_one_turn() <= _BATCH, (
            f"{turns.most_in_one_turn()} sub-channels built in one loop turn")
        assert len(balancer._all) == _ENDPOINTS  # the balancer has them all


async def test_a_later_answer_decides_what_is_still_to_be_added() -> None:
    """While the rest of an answer is still to be built, the next answer drops an
    instance not built yet (never built), moves one (built at its new port only) and
    adds one."""
    registry = _Registry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        turns = _Turns(pool)
        try:
            first = [_inst(i) for i in range(_ENDPOINTS)]
            pool.apply(frozenset(first))
            later = [i for i in first if i.instance_id != "i0500"]  # leaves unbuilt
            later = [_inst(501, port=10) if i.instance_id == "i0501" else i for i in later]
            later.append(_inst(9999))
            pool.apply(frozenset(later))
            await until(lambda: len(pool.endpoints) == _ENDPOINTS, timeout_s=30,
                        what="every endpoint of the later answer in the pool")
            await asyncio.sleep(0.1)  # nothing more comes
        finally:
            turns.stop()
        assert "i0500" not in pool.endpoints
        assert pool.endpoints["i0501"].address == "127.0.0.1:10"
        assert "i9999" in pool.endpoints
        assert len(turns.built) == _ENDPOINTS  # 599 of the first, and i9999
        assert "127.0.0.1:10" in {address for _, address in turns.built}


async def test_a_filter_failing_meanwhile_keeps_what_is_still_to_be_built() -> None:
    """A filter that raises on the next answer keeps the last choice (the pool's own
    rule), the instances still to be built of it included."""
    registry = _Registry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        everyone = frozenset(_inst(i) for i in range(_ENDPOINTS))
        pool.apply(everyone)

        def broken(instances: object) -> list[Instance]:
            raise RuntimeError("a filter's own bug")

        pool._filters = (broken,)
        pool.apply(everyone)
        await until(lambda: len(pool.endpoints) == _ENDPOINTS, timeout_s=30,
                    what="every endpoint of the last choice in the pool")
