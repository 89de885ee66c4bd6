"""A first discovery answer larger than ``BUILD_BATCH`` reaches the balancer in several
updates, a batch per turn of the event loop. P2C told the first answer's endpoints from
newcomers by whether one of its endpoints had been READY yet: a first batch that
connected before the later batches were added (loopback, a warm connection pool, ~1,000
instances at 64 a turn) had the later batches slow-started, although none of them had
taken a call, and the first batch (the same for every client: sorted by instance id)
took several times its share for ``slow_start_s``.

The pool now tells the balancer which updates belong to the first answer
(``cold_start(True)`` before it, ``cold_start(False)`` once its last batch is in), and
no endpoint of the first answer ramps, whatever connected meanwhile; an endpoint a later
answer adds still does."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.balancer import P2C, EjectingBalancer, EndpointState
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_N = 600


def _inst(i: int) -> Instance:
    # port 9 (discard): nobody listens; the test sets the states itself
    return Instance(service="big", instance_id=f"i{i:04d}", host="127.0.0.1", port=9)


async def test_no_batch_of_the_first_answer_ramps_though_the_first_connected() -> None:
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=QueueRegistry(), options=opts) as ch:
        pool = ch._pool
        outer = pool.balancer
        assert isinstance(outer, EjectingBalancer)
        p2c = outer.inner
        assert isinstance(p2c, P2C)
        pool.apply(frozenset(_inst(i) for i in range(_N)))
        first = list(pool.endpoints.values())
        assert 0 < len(first) < _N
        for ep in first:  # the first batch connects before the rest is added
            ep.state = EndpointState.READY
        await until(lambda: len(pool.endpoints) == _N, timeout_s=30,
                    what="every endpoint of the first answer in the pool")
        await until(lambda: len(outer._all) == _N, timeout_s=30, what="the balancer's")
        for ep in pool.endpoints.values():
            ep.state = EndpointState.READY
        ramping = [ep.key for ep in pool.endpoints.values() if p2c.weight(ep) < 1.0]
        assert not ramping, f"{len(ramping)} of the first answer slow-started"
        # a later answer's newcomer still ramps
        pool.apply(frozenset(_inst(i) for i in range(_N + 1)))
        late = pool.endpoints[f"i{_N:04d}"]
        late.state = EndpointState.READY
        assert p2c.weight(late) < 1.0


async def test_an_empty_first_answer_leaves_the_next_one_the_cold_start() -> None:
    """A service not registered yet when the channel is dialled: its first answer with
    endpoints is the cold start, built in batches as well."""
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=QueueRegistry(), options=opts) as ch:
        pool = ch._pool
        outer = pool.balancer
        assert isinstance(outer, EjectingBalancer)
        p2c = outer.inner
        assert isinstance(p2c, P2C)
        pool.apply(frozenset())
        pool.apply(frozenset(_inst(i) for i in range(_N)))
        for ep in list(pool.endpoints.values()):
            ep.state = EndpointState.READY
        await until(lambda: len(outer._all) == _N, timeout_s=30, what="the balancer's")
        for ep in pool.endpoints.values():
            ep.state = EndpointState.READY
        ramping = [ep.key for ep in pool.endpoints.values() if p2c.weight(ep) < 1.0]
        assert not ramping, f"{len(ramping)} of the first answer with endpoints ramped"
