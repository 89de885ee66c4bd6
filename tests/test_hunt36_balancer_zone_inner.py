"""ZoneAwareBalancer's ``inner`` is a factory, called once per zone group; given a
balancer instead (ZoneAwareBalancer("a", RoundRobin()), an easy slip beside
DialOptions(balancer=P2C)), or anything else not callable, it failed with a bare
TypeError "'RoundRobin' object is not callable", and inside a
functools.partial(ZoneAwareBalancer, ...) given as DialOptions.balancer only at dial().
It is refused where it is written, as DialOptions refuses a balancer that is no factory
and as the zone is checked."""

from __future__ import annotations

import functools

import pytest

from meshkit.balancer import RoundRobin, ZoneAwareBalancer
from meshkit.errors import ConfigError


@pytest.mark.parametrize("inner", [RoundRobin(), None, "P2C"],
                         ids=["a-balancer-instance", "none", "a-name"])
def test_zone_aware_balancer_refuses_an_inner_that_is_no_factory(inner: object) -> None:
    with pytest.raises(ConfigError, match="factory") as err:
        ZoneAwareBalancer("eu-west-1a", inner)  # type: ignore[arg-type]
    assert repr(inner) in str(err.value)


def test_zone_aware_balancer_takes_a_factory() -> None:
    zab = ZoneAwareBalancer("a", functools.partial(RoundRobin, None))
    assert isinstance(zab.local, RoundRobin) and isinstance(zab.other, RoundRobin)
    assert zab.local is not zab.other
