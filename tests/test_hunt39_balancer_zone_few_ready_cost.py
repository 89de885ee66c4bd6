"""A zone-aware pick while the local zone has no READY endpoint (a partition: its
endpoints connecting, its calls going to another zone) costs O(1), not O(local).

``ZoneAwareBalancer`` asked "is another local endpoint READY?" with a scan of every
local endpoint at each pick whose local choice was not READY (or was excluded): with
1,000 local endpoints connecting, every call failing over to the other zone read 1,000
endpoint states. Now it keeps its local endpoints by state (``StateIndex``). Counted
here: endpoint states read per pick (an endpoint examined).
"""

from __future__ import annotations

import random

import grpc
import pytest

from meshkit.balancer import P2C, Endpoint, EndpointState, ZoneAwareBalancer
from meshkit.discovery import Instance
from tests.support.counting import CountedEndpoint as _Counted

pytestmark = pytest.mark.timeout(60)


def _zone(zone: str, n: int, state: EndpointState) -> list[Endpoint]:
    eps: list[Endpoint] = [
        _Counted(Instance(service="s", instance_id=f"{zone}{i:04d}", host="127.0.0.1",
                          port=1000 + i, meta={"zone": zone}))
        for i in range(n)]
    for ep in eps:
        ep.state = state
    return eps


def _balancer(seed: int) -> ZoneAwareBalancer:
    rng = random.Random(seed)
    return ZoneAwareBalancer("a", lambda: P2C(rng=rng))


@pytest.mark.parametrize("retry", [False, True], ids=["first", "retry"])
def test_failover_pick_examines_few_endpoints(retry: bool) -> None:
    """1,000 local endpoints connecting, 10 READY in zone b: each pick goes to zone b
    and reads a handful of endpoint states (a retry excluding one of zone b too)."""
    local = _zone("a", 1000, EndpointState.IDLE)
    other = _zone("b", 10, EndpointState.READY)
    zb = _balancer(1)
    zb.update(local + other)
    _Counted.reads = 0
    for i in range(100):
        got = zb.pick(exclude=(other[i % 10],) if retry else ())
        assert got is not None
        assert got[0] in other and (not retry or got[0] is not other[i % 10])
        got[1](grpc.StatusCode.OK, 0.01)
    assert _Counted.reads / 100 <= 40, f"{_Counted.reads / 100:.0f} states read per pick"


def test_local_ready_again_takes_the_calls() -> None:
    """No change of choice: once a local endpoint is READY (its state set after the
    update), the picks are the local zone's; a retry that tried it goes to zone b."""
    local = _zone("a", 50, EndpointState.IDLE)
    other = _zone("b", 5, EndpointState.READY)
    zb = _balancer(2)
    zb.update(local + other)
    got = zb.pick()
    assert got is not None and got[0] in other
    local[7].state = EndpointState.READY
    for _ in range(20):
        got = zb.pick()
        assert got is not None and got[0] is local[7]
        got[1](grpc.StatusCode.OK, 0.01)
    got = zb.pick(exclude=(local[7],))
    assert got is not None and got[0] in other
    local[7].state = EndpointState.FAILING
    got = zb.pick()
    assert got is not None and got[0] in other
