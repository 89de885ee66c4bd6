"""The pool's word on the first discovery answer (``cold_start``, db8cc320/e9b526f1)
when none of the first answer's sub-channels could be built at first.

The pool said ``cold_start(True)`` with the first answer and ``cold_start(False)`` only
from ``apply``/``_add_rest`` once it had endpoints; a first answer whose every
sub-channel failed to build (``make_channel`` raised: a process briefly out of file
descriptors) was put in the pool later by ``_retry_builds``, which never said
``cold_start(False)``: the balancer stayed in the cold start until the next discovery
answer, so the endpoint that answer added (a scale-out) took its full share at once
instead of ramping. ``_retry_builds`` now ends the cold start as the other two do.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import P2C, EjectingBalancer, EndpointState, RoundRobin
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


def _inst(i: int) -> Instance:
    # port 9 (discard): nobody listens; the test sets the states itself
    return Instance(service="cold", instance_id=f"i{i:02d}", host="127.0.0.1", port=9)


@pytest.mark.parametrize("balancer", [P2C, lambda: RoundRobin(slow_start_s=30.0)],
                         ids=["p2c", "round-robin"])
async def test_a_first_answer_built_by_the_retry_ends_the_cold_start(balancer: Any) -> None:
    opts = meshkit.DialOptions(insecure=True, retry=None, balancer=balancer)
    async with meshkit.dial("cold", registry=QueueRegistry(), options=opts) as ch:
        pool = ch._pool
        outer = pool.balancer
        assert isinstance(outer, EjectingBalancer)
        inner = outer.inner
        made = pool._make_channel
        broken = True

        def make_channel(address: str) -> grpc.aio.Channel:
            if broken:
                raise OSError("Too many open files")
            return made(address)

        pool._make_channel = make_channel
        pool.apply(frozenset(_inst(i) for i in range(3)))
        assert not pool.endpoints and len(pool._unbuilt) == 3
        broken = False  # the retry (0.1 s on) builds them
        await until(lambda: len(pool.endpoints) == 3, timeout_s=30,
                    what="the first answer built by the retry")
        for ep in pool.endpoints.values():
            ep.state = EndpointState.READY
        assert all(inner.weight(ep) == 1.0 for ep in pool.endpoints.values())
        # a later answer's newcomer ramps
        pool.apply(frozenset(_inst(i) for i in range(4)))
        late = pool.endpoints["i03"]
        late.state = EndpointState.READY
        assert inner.weight(late) < 1.0, "the scale-out's newcomer took its full share"
