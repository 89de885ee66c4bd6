"""Round-robin policy: pure unit tests, no I/O."""

from __future__ import annotations

import random

from meshkit.balancer import Endpoint, EndpointState, RoundRobin
from meshkit.discovery import Instance


def eps(*names: str) -> list[Endpoint]:
    """Endpoints named ``names``, READY."""
    out = []
    for i, n in enumerate(names):
        ep = Endpoint(Instance(service="s", instance_id=n, host="127.0.0.1", port=1000 + i))
        ep.state = EndpointState.READY
        out.append(ep)
    return out


def picks(rr: RoundRobin, n: int, **kw: object) -> list[str]:
    """Keys of ``n`` consecutive picks."""
    out = []
    for _ in range(n):
        got = rr.pick(**kw)  # type: ignore[arg-type]
        assert got is not None
        out.append(got[0].key)
    return out


def test_cycles_evenly_through_ready_endpoints() -> None:
    """Each READY endpoint is picked once per round."""
    rr = RoundRobin(random.Random(1))
    rr.update(eps("a", "b", "c"))
    got = picks(rr, 9)
    assert sorted(got) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert len(set(got[:3])) == 3


def test_skips_failing_and_prefers_ready_over_idle() -> None:
    """FAILING endpoints are never picked; IDLE ones only when none is READY."""
    a, b, c = eps("a", "b", "c")
    b.state = EndpointState.FAILING
    c.state = EndpointState.IDLE
    rr = RoundRobin(random.Random(2))
    rr.update([a, b, c])
    assert set(picks(rr, 6)) == {"a"}
    a.state = EndpointState.FAILING
    assert set(picks(rr, 3)) == {"c"}


def test_an_unusable_endpoint_does_not_double_its_neighbours_share() -> None:
    """With a, b, c and b not READY, a and c alternate, half the picks each: the endpoint
    after a skipped one must not take the skipped one's turn too (it took 200 of 300
    picks, a 100), as gRPC's round_robin picker rotates over READY subchannels only."""
    from collections import Counter

    for bad in (EndpointState.FAILING, EndpointState.IDLE):
        a, b, c = eps("a", "b", "c")
        b.state = bad
        rr = RoundRobin(random.Random(0))
        rr.update([a, b, c])
        assert Counter(picks(rr, 300)) == {"a": 150, "c": 150}, bad


def test_none_when_empty_or_all_failing() -> None:
    """With no endpoint, or every endpoint failing, pick returns None."""
    rr = RoundRobin()
    assert rr.pick() is None
    (a,) = eps("a")
    a.state = EndpointState.FAILING
    rr.update([a])
    assert rr.pick() is None


def test_exclude_is_a_preference() -> None:
    """Excluded endpoints are avoided while another exists, and used when none does."""
    a, b = eps("a", "b")
    rr = RoundRobin(random.Random(3))
    rr.update([a, b])
    assert set(picks(rr, 4, exclude=[a])) == {"b"}
    rr.update([a])
    assert picks(rr, 1, exclude=[a]) == ["a"]


def test_done_accepts_outcome() -> None:
    """The done callback takes a status code and a latency."""
    import grpc

    rr = RoundRobin()
    rr.update(eps("a"))
    got = rr.pick()
    assert got is not None
    got[1](grpc.StatusCode.OK, 0.001)
