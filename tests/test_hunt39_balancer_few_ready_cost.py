"""A pick among many endpoints of which few (or none) are READY costs O(1), not O(n);
and the endpoint indexes that make it so agree with a scan after any changes.

P2C draws two endpoints at random; when they were not both READY it drew again from
all endpoints, scanning every one of them when four random tries found no READY one.
Measured with 2,000 endpoints: 57 us a pick with 10 % READY and 366 us with none READY
(the calls of a 500-call dial picking again while the sub-channels connect stalled the
event loop 170-900 ms). Now the balancer keeps its endpoints by state
(``StateIndex``, moved by ``Endpoint.state``'s setter) and draws from the READY (then
IDLE) ones. Counted here: endpoint states read per pick (an endpoint examined).
"""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshkit
from meshkit.balancer import P2C, Endpoint, EndpointState
from meshkit.discovery import Instance, LocalRegistry
from tests.support.counting import CountedEndpoint as _Counted
from tests.support.counting import counted_endpoints as _endpoints
from tests.support.echo import handler
from tests.support.ports import free_port
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

_N = 2000


@pytest.mark.parametrize("ready", [0, 1, _N // 10], ids=["none", "one", "tenth"])
def test_pick_examines_few_endpoints_when_few_are_ready(ready: int) -> None:
    """2,000 endpoints, none / one / 200 READY: a pick reads a handful of states."""
    eps = _endpoints(_N, ready)
    p2c = P2C(rng=random.Random(7))
    p2c.update(eps)
    picks = 200
    _Counted.reads = 0
    chosen = Counter()
    for _ in range(picks):
        got = p2c.pick()
        assert got is not None
        ep, done = got
        chosen[ep.state] += 1
        done(grpc.StatusCode.CANCELLED, 0.0)
    per_pick = _Counted.reads / picks
    # before: about 2 x 2,000 with none READY, 1,300 with 10 % READY
    assert per_pick <= 20, f"{per_pick:.0f} endpoint states read per pick"
    assert chosen == Counter({EndpointState.READY if ready else EndpointState.IDLE: picks})


def test_excluded_pick_examines_few_endpoints() -> None:
    """A retry's pick (the tried endpoint excluded) with 1 % READY: no scan of all."""
    eps = _endpoints(_N, _N // 100)
    p2c = P2C(rng=random.Random(3))
    p2c.update(eps)
    _Counted.reads = 0
    for i in range(100):
        got = p2c.pick(exclude=(eps[i % 20],))
        assert got is not None and got[0] is not eps[i % 20]
        assert got[0].state is EndpointState.READY
        got[1](grpc.StatusCode.OK, 0.01)
    assert _Counted.reads / 100 <= 60, f"{_Counted.reads / 100:.0f} reads per pick"


def test_draw_is_uniform_over_the_ready_ones() -> None:
    """No change of choice: with 3 of 60 READY and equal loads, each READY one gets
    about a third of the picks (and the IDLE ones none)."""
    eps = _endpoints(60, 0)
    for i in (5, 17, 42):
        eps[i].state = EndpointState.READY
    p2c = P2C(rng=random.Random(11))
    p2c.update(eps)
    counts: Counter[str] = Counter()
    for _ in range(3000):
        got = p2c.pick()
        assert got is not None
        counts[got[0].key] += 1
        got[1](grpc.StatusCode.CANCELLED, 0.0)
    assert set(counts) == {"e0005", "e0017", "e0042"}
    assert all(700 <= c <= 1300 for c in counts.values()), counts


_STATES = st.sampled_from(list(EndpointState))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 9), _STATES),
    st.tuples(st.just("add"), st.integers(0, 9), _STATES),
    st.tuples(st.just("discard"), st.integers(0, 9), _STATES),
    st.tuples(st.just("track"), st.integers(0, 1023), _STATES),
), max_size=60))
def test_state_index_agrees_with_a_scan(ops: list[tuple[str, int, EndpointState]]) -> None:
    """Random state changes and membership changes, two indexes sharing endpoints:
    each index's lists are its members in each state, as a scan finds them."""
    from meshkit.balancer._endpoint import StateIndex

    eps = [Endpoint(Instance(service="s", instance_id=f"e{i}", host="h", port=1 + i))
           for i in range(10)]
    a, b = StateIndex(eps[:6]), StateIndex(eps[3:])
    members_a, members_b = set(eps[:6]), set(eps[3:])
    for op, arg, state in ops:
        if op == "set":
            eps[arg].state = state
        elif op == "add":
            (a if state is EndpointState.IDLE else b).add(eps[arg])
            (members_a if state is EndpointState.IDLE else members_b).add(eps[arg])
        elif op == "discard":
            (a if state is EndpointState.IDLE else b).discard(eps[arg])
            (members_a if state is EndpointState.IDLE else members_b).discard(eps[arg])
        else:
            chosen = [ep for i, ep in enumerate(eps) if arg >> i & 1]
            a.track(chosen)
            members_a = set(chosen)
        for index, members in ((a, members_a), (b, members_b)):
            assert len(index) == len(members)
            for s in EndpointState:
                want = {ep for ep in members if ep.state is s}
                assert set(index.of(s)) == want
                assert index.count(s) == len(want) == len(index.of(s))


def test_p2c_update_leaves_gone_endpoints_out() -> None:
    """An endpoint the balancer no longer has is out of its index: READY or not, a
    pick never returns it."""
    eps = _endpoints(10, 10)
    p2c = P2C(rng=random.Random(5))
    p2c.update(eps)
    p2c.update(eps[5:])
    for ep in eps[:5]:
        ep.state = EndpointState.IDLE
        ep.state = EndpointState.READY
    for ep in eps[5:]:
        ep.state = EndpointState.FAILING
    for _ in range(50):
        assert p2c.pick() is None


async def test_pool_ready_count_agrees_with_a_scan(registry: LocalRegistry) -> None:
    """The pool's READY count (what a waiting call tests on each wake, and
    ``wait_for_endpoints``) is the scan's, as endpoints connect, fail, leave and the
    channel closes."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler("s"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    dead = free_port()
    try:
        live = [Instance(service="cnt", instance_id=f"live{i}", host="127.0.0.1", port=port)
                for i in range(3)]
        for inst in live:
            await registry.register(inst)
        await registry.register(Instance(service="cnt", instance_id="dead",
                                         host="127.0.0.1", port=dead))
        ch = meshkit.dial("cnt", registry=registry,
                          options=meshkit.DialOptions(insecure=True))
        pool = ch._pool

        def scan() -> int:
            return sum(ep.state is EndpointState.READY for ep in pool.endpoints.values())

        try:
            await ch.wait_for_endpoints(3, timeout_s=30)
            assert pool.ready_count == scan() == 3
            await registry.deregister(live[0])
            await until(lambda: "live0" not in pool.endpoints, timeout_s=30)
            assert pool.ready_count == scan() == 2
            with pytest.raises(TimeoutError, match="2 of 3 endpoints"):
                await ch.wait_for_endpoints(3, timeout_s=0.2)
        finally:
            await ch.close()
        assert pool.ready_count == scan() == 0
    finally:
        await server.stop(None)
