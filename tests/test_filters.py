"""Endpoint filters (Subset, PreferZone) and the per-call zone preference
(ZoneAwareBalancer), alone and through dial()."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter

import grpc
import pytest

import meshkit
from meshkit.balancer import (
    P2C,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    PreferZone,
    RingHash,
    RoundRobin,
    Subset,
    ZoneAwareBalancer,
    apply_filters,
)
from meshkit.balancer._zone import split_zone_preference
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import ConfigError
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.ports import free_port

READY = EndpointState.READY
IDLE = EndpointState.IDLE
FAILING = EndpointState.FAILING
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _inst(n: str, zone: str = "a", version: str = "v1", tags: tuple[str, ...] = ()) -> Instance:
    return Instance(service="s", instance_id=n, host="127.0.0.1", port=1000,
                    meta={"zone": zone, "version": version}, tags=tags)


def test_subset_keeps_instances_matching_every_meta_value_and_tag() -> None:
    """Subset keeps only instances with all the given meta values and tags."""
    insts = [_inst("a", version="v2", tags=("canary",)), _inst("b", version="v2"),
             _inst("c", version="v1", tags=("canary",))]
    got = apply_filters([Subset(meta={"version": "v2"}, tags=("canary",))], insts)
    assert [i.instance_id for i in got] == ["a"]


def test_prefer_zone_falls_back_to_every_zone_when_local_is_empty() -> None:
    """PreferZone keeps the local zone while it has instances, else all of them."""
    insts = [_inst("a", zone="x"), _inst("b", zone="y")]
    assert [i.instance_id for i in apply_filters([PreferZone("y")], insts)] == ["b"]
    assert [i.instance_id for i in apply_filters([PreferZone("z")], insts)] == ["a", "b"]


def test_filters_run_in_order() -> None:
    """Filters chain: a subset first, then the zone preference among what is left."""
    insts = [_inst("a", zone="x", version="v2"), _inst("b", zone="y", version="v1"),
             _inst("c", zone="y", version="v2")]
    got = apply_filters([Subset(meta={"version": "v2"}), PreferZone("y")], insts)
    assert [i.instance_id for i in got] == ["c"]


def test_bad_filter_config_is_refused_at_construction() -> None:
    """An empty Subset, bare-string tags, an empty zone, or a non-callable filter."""
    with pytest.raises(ConfigError, match="needs meta or tags"):
        Subset()
    with pytest.raises(ConfigError, match="'canary'"):
        Subset(tags="canary")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="''"):
        PreferZone("")
    with pytest.raises(ConfigError, match="42"):
        meshkit.DialOptions(insecure=True, filters=(42,))  # type: ignore[arg-type]


async def test_dial_balances_only_over_filtered_instances(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A channel with a Subset filter never calls an instance outside the subset."""
    await echo_servers("old", meta={"version": "v1"})
    await echo_servers("new", meta={"version": "v2"})
    opts = meshkit.DialOptions(insecure=True, filters=(Subset(meta={"version": "v2"}),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        got = Counter([(await unary(b"", timeout=5)).split(b"|")[0] for _ in range(20)])
    assert got == Counter({b"new": 20})


# -- per-call zone preference ----------------------------------------------------------
def _ep(n: str, zone: str, state: EndpointState = READY, port: int = 1000) -> Endpoint:
    ep = Endpoint(Instance(service="s", instance_id=n, host="127.0.0.1", port=port,
                           meta={"zone": zone}))
    ep.state = state
    return ep


def _picked(balancer: ZoneAwareBalancer | EjectingBalancer, n: int = 50,
            code: grpc.StatusCode = OK) -> Counter[str]:
    got: Counter[str] = Counter()
    for _ in range(n):
        picked = balancer.pick()
        assert picked is not None
        got[picked[0].key] += 1
        picked[1](code, 0.001)
    return got


def test_zone_aware_balancer_keeps_to_the_local_zone_while_it_has_a_ready_endpoint() -> None:
    """Every call goes to the local zone's READY endpoints, balanced by the inner policy
    (here round robin over a1 and a2); b1, READY too, gets none."""
    zb = ZoneAwareBalancer("a", RoundRobin)
    zb.update([_ep("a1", "a"), _ep("a2", "a"), _ep("b1", "b")])
    assert _picked(zb, 40) == Counter({"a1": 20, "a2": 20})


@pytest.mark.parametrize("local_state", [FAILING, IDLE], ids=["failing", "connecting"])
def test_zone_aware_balancer_fails_over_when_no_local_endpoint_is_ready(
    local_state: EndpointState,
) -> None:
    """Local endpoints that refuse connections (FAILING), or are still connecting while
    another zone has a READY one (a partition leaves them connecting for the whole
    connect timeout), do not hold the calls: they go to zone b. The pick the local P2C
    made and that was not sent is settled as no outcome (nothing left pending). Once a
    local endpoint is READY again, the calls come back."""
    zb = ZoneAwareBalancer("a")
    a1 = _ep("a1", "a", local_state)
    zb.update([a1, _ep("b1", "b"), _ep("b2", "b")])
    assert set(_picked(zb)) <= {"b1", "b2"}
    assert all(row["pending"] == 0 for row in zb.snapshot())
    a1.state = READY
    assert _picked(zb, 20) == Counter({"a1": 20})


def test_zone_aware_balancer_takes_the_local_zone_before_any_endpoint_connects() -> None:
    """With nothing READY anywhere (a channel just opened), the local zone is tried first
    (the call waits for its connection); with nothing usable anywhere, no pick."""
    zb = ZoneAwareBalancer("a", RoundRobin)
    a1, b1 = _ep("a1", "a", IDLE), _ep("b1", "b", IDLE)
    zb.update([a1, b1])
    assert _picked(zb, 5) == Counter({"a1": 5})
    a1.state = b1.state = FAILING
    assert zb.pick() is None and zb.pick_stream() is None


def test_zone_aware_balancer_falls_back_to_every_zone_without_a_local_instance() -> None:
    """No local instance registered: the other zones' endpoints take every call (what
    PreferZone did too)."""
    zb = ZoneAwareBalancer("z", RoundRobin)
    zb.update([_ep("a1", "a"), _ep("b1", "b")])
    assert _picked(zb, 10) == Counter({"a1": 5, "b1": 5})


def test_zone_aware_balancer_sends_a_retry_to_another_zone_after_the_local_endpoint() -> None:
    """A retry that already tried the only local endpoint goes to an untried one of
    another zone (the Balancer protocol's exclude preference); with every endpoint
    tried, to the local one again."""
    zb = ZoneAwareBalancer("a", RoundRobin)
    a1, b1 = _ep("a1", "a"), _ep("b1", "b")
    zb.update([a1, b1])
    got = zb.pick(exclude=(a1,))
    assert got is not None and got[0] is b1
    got = zb.pick(exclude=(a1, b1))
    assert got is not None and got[0] is a1


def test_zone_aware_balancer_keeps_a_ring_hash_owner_connecting_in_the_local_zone() -> None:
    """A keyed call whose local ring owner is connecting while another local endpoint is
    READY keeps its owner (ring hash affinity, gRFC A42): the local zone can serve."""
    zb = ZoneAwareBalancer("a", RingHash)
    local = [_ep(f"a{i}", "a", port=1000 + i) for i in range(3)]
    zb.update([*local, _ep("b1", "b")])
    owner = zb.pick("user-7")
    assert owner is not None
    owner[0].state = IDLE
    again = zb.pick("user-7")
    assert again is not None and again[0] is owner[0]


def test_zone_aware_balancer_fails_over_from_an_ejected_local_endpoint() -> None:
    """Under outlier ejection, a local endpoint that fails every call is ejected and the
    calls go to zone b, where PreferZone kept zone b out of the channel and panic
    routing sent every call to the ejected endpoint. Panic routing stays for when no
    zone has anything left."""
    eb = EjectingBalancer(ZoneAwareBalancer("a", RoundRobin),
                          OutlierOptions(consecutive_failures=5), clock=lambda: 0.0)
    eb.update([_ep("a1", "a"), _ep("b1", "b")])
    assert _picked(eb, 5, UNAVAILABLE) == Counter({"a1": 5})
    assert eb.ejected() == ["a1"]
    assert _picked(eb, 20) == Counter({"b1": 20})
    assert eb.panic_picks == 0


def test_zone_aware_balancer_hands_streams_to_the_inner_pick_stream() -> None:
    """A stream's pick goes through the inner P2C's pick_stream: its outcome callback
    hears of the first response (``responded()``), which takes it off pending."""
    zb = ZoneAwareBalancer("a", P2C)
    zb.update([_ep("a1", "a"), _ep("b1", "b")])
    got = zb.pick_stream()
    assert got is not None and got[0].key == "a1"
    assert [r["pending"] for r in zb.snapshot()] == [1, 0]
    got[1].responded()  # type: ignore[attr-defined]
    assert [r["pending"] for r in zb.snapshot()] == [0, 0]


def test_zone_aware_balancer_refuses_an_empty_zone() -> None:
    """An empty zone is a ConfigError quoting it."""
    with pytest.raises(ConfigError, match="''"):
        ZoneAwareBalancer("")


def test_split_zone_preference_moves_prefer_zone_to_the_balancer() -> None:
    """PreferZone filters leave the discovery filters for a ZoneAwareBalancer around the
    channel's balancer (the first zone outermost); other filters stay, in order."""
    subset = Subset(meta={"version": "v2"})
    assert split_zone_preference((subset,), P2C) == ((subset,), P2C)
    filters, factory = split_zone_preference((PreferZone("a"), subset, PreferZone("b")),
                                             RoundRobin)
    assert filters == (subset,)
    outer = factory()
    assert isinstance(outer, ZoneAwareBalancer) and outer.zone == "a"
    inner = outer.local
    assert isinstance(inner, ZoneAwareBalancer) and inner.zone == "b"
    assert isinstance(inner.local, RoundRobin)


async def _dead_local_and_healthy_remote(registry: LocalRegistry,
                                         echo_servers: EchoFactory) -> None:
    await registry.register(Instance(service="echo", instance_id="local-dead",
                                     host="127.0.0.1", port=free_port(), meta={"zone": "a"}))
    await echo_servers("remote", meta={"zone": "b"})


async def test_dial_zone_aware_fails_over_when_the_local_instances_cannot_be_reached(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """The local zone's only instance is registered (it still heartbeats, or its TTL has
    not run out after a crash) but refuses connections; zone b is healthy.

    What was wrong: the zone preference was only a discovery filter (PreferZone), which
    keeps the local instances while any is registered, so the channel never saw zone b
    and every call failed UNAVAILABLE "all 1 endpoints are failing or ejected", against
    its promise to "fail over to other zones rather than to nothing" (Envoy's and
    Linkerd's locality failover spill over when the local zone has no *healthy* host).
    Now ZoneAwareBalancer decides per call: the calls are answered by zone b."""
    await _dead_local_and_healthy_remote(registry, echo_servers)
    opts = meshkit.DialOptions(insecure=True,
                               balancer=functools.partial(ZoneAwareBalancer, "a"))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        unary = ch.unary_unary(method("Unary"))
        for _ in range(5):
            got = await asyncio.wait_for(unary(b"x", timeout=5), 10)
            assert got.split(b"|")[0] == b"remote"


async def test_dial_prefer_zone_filter_fails_over_when_the_local_instances_cannot_be_reached(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """The same with the zone preference given as a filter, ``filters=(PreferZone("a"),)``,
    as the README shows it: it was applied to each discovery answer, so the balancer
    never saw zone b and every call failed UNAVAILABLE "all 1 endpoints are failing or
    ejected". The channel now moves a PreferZone to the balancer
    (split_zone_preference): the calls are answered by zone b."""
    await _dead_local_and_healthy_remote(registry, echo_servers)
    opts = meshkit.DialOptions(insecure=True, filters=(PreferZone("a"),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        unary = ch.unary_unary(method("Unary"))
        await asyncio.sleep(1.0)  # the local endpoint's connection fails meanwhile
        got = await asyncio.wait_for(unary(b"x", timeout=3), 5)
    assert got.split(b"|")[0] == b"remote"
