"""Two replicas refusing for their own way to the rate-limit storage are both ejected.

d6253da4 counted a fail-closed rate-limit refusal (``meshkit-ratelimit-unavailable``)
as the shared storage's (no endpoint's outcome) whenever *another* endpoint had refused
so within ``SHARED_REFUSAL_WINDOW_S``. Two broken replicas (a zone cut off from Redis, a
rollout with a wrong password reaching two pods) thus vouched for each other: with three
healthy peers answering, both failed their share of the calls for good (round robin: 2
calls in 5 ``UNAVAILABLE`` forever), never ejected. A refusal is now the shared
storage's only when the endpoints refusing so within the window are most of the pool's.

Real meshkit servers and a real mesh channel on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions, PreferZone, RoundRobin
from meshkit.discovery import LocalRegistry
from tests.test_hunt42_o1_ratelimit_deny_no_ejection import _endpoints, _unary
from tests.test_hunt42_r_ratelimit_local_storage_fault import (
    _broken,
    _server_stream,
    _working,
)

pytestmark = pytest.mark.timeout(30)

_KINDS = {"unary": _unary, "server_stream": _server_stream}


@pytest.mark.parametrize("kind", list(_KINDS), ids=list(_KINDS))
async def test_two_replicas_refusing_alone_are_both_ejected(
        registry: LocalRegistry, echo_servers: Any, kind: str) -> None:
    for name in ("bad1", "bad2"):
        await echo_servers(name, rate_limit=_broken())
    for name in ("b", "c", "d"):
        await echo_servers(name, rate_limit=_working())
    opts = meshkit.DialOptions(insecure=True, retry=None, balancer=RoundRobin,
                               outlier=OutlierOptions(consecutive_failures=2,
                                                      max_ejection_percent=100.0,
                                                      base_ejection_s=30.0))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = _KINDS[kind]
        codes = [await call(ch) for _ in range(40)]
        seen = await _endpoints(ch)
        assert seen["bad1"][1] and seen["bad2"][1], (seen, codes)
        assert all(seen[n] == (0, False) for n in ("b", "c", "d")), seen
        assert codes[-10:] == [grpc.StatusCode.OK] * 10, codes


@pytest.mark.parametrize("kind", list(_KINDS), ids=list(_KINDS))
async def test_a_shared_outage_under_zone_preference_ejects_none(
        registry: LocalRegistry, echo_servers: Any, kind: str) -> None:
    """The shared storage down, every replica refusing: with ``PreferZone`` only the
    local zone's take calls (the pool holds both zones'), so "most of the pool refused"
    would read the outage as the local replicas' own and eject them. The endpoints that
    take calls are what a refusal is weighed against."""
    for name in ("a1", "a2", "a3"):
        await echo_servers(name, rate_limit=_broken(), meta={"zone": "a"})
    for name in ("b1", "b2", "b3"):
        await echo_servers(name, rate_limit=_broken(), meta={"zone": "b"})
    opts = meshkit.DialOptions(insecure=True, retry=None, balancer=RoundRobin,
                               filters=(PreferZone("a"),),
                               outlier=OutlierOptions(consecutive_failures=2,
                                                      max_ejection_percent=100.0,
                                                      base_ejection_s=30.0))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = _KINDS[kind]
        codes = [await call(ch) for _ in range(30)]
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 30, codes
        seen = await _endpoints(ch)
        assert all(v == (0, False) for v in seen.values()), seen
