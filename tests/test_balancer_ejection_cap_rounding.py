"""``max_ejection_percent`` of the endpoints, as Envoy counts it (an ejection is allowed
while ``100 * (ejected + 1) / hosts <= max_ejection_percent``): a decimal percentage that
makes a whole number of endpoints allows exactly that many, not one fewer because the
binary float product falls just short of it (18.4 % of 375 is 69, not 68.99999999999999)."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import EjectingBalancer, Endpoint, EndpointState, OutlierOptions, RoundRobin
from meshkit.discovery import Instance


def _eps(n: int) -> list[Endpoint]:
    out = []
    for i in range(n):
        e = Endpoint(Instance(service="svc", instance_id=f"e{i:04d}", host="127.0.0.1",
                              port=2000 + i))
        e.state = EndpointState.READY
        out.append(e)
    return out


def _ejected_at_most(n: int, percent: float) -> int:
    """How many of ``n`` endpoints one failure each ejects under ``percent``."""
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(
        consecutive_failures=1, max_ejection_percent=percent), clock=lambda: 50.0)
    eb.update(_eps(n))
    for _ in range(n):
        got = eb.pick()
        assert got is not None
        got[1](grpc.StatusCode.UNAVAILABLE, 0.001)
    return len(eb.ejected())


def test_a_decimal_percentage_of_a_whole_number_of_endpoints_is_reached() -> None:
    """18.4 % of 375 endpoints is 69 ejections, and 32.8 % is 123 (Envoy's arithmetic)."""
    assert _ejected_at_most(375, 18.4) == 69
    assert _ejected_at_most(375, 32.8) == 123


def test_whole_percentages_and_the_one_at_least_rule_are_unchanged() -> None:
    """50 % of 10 is 5; 10 % of 4 still allows one (at least one may always be); 0 %
    allows one."""
    assert _ejected_at_most(10, 50) == 5
    assert _ejected_at_most(4, 10) == 1
    assert _ejected_at_most(4, 0) == 1


class _Percent(float):
    """A float subclass whose repr is not a bare number, as numpy's float64 in numpy 2
    (``np.float64(18.4)``) read from a config file or a data frame."""

    def __repr__(self) -> str:
        return f"np.float64({float(self)!r})"


def test_a_float_subclass_percentage_is_counted_as_its_value() -> None:
    """A percentage OutlierOptions accepts as a float (a float subclass whose repr is no
    bare number, as numpy's) gives the same cap as the plain float: 18.4 % of 375 is 69."""
    assert _ejected_at_most(375, _Percent(18.4)) == 69
    assert _ejected_at_most(10, _Percent(50)) == 5
