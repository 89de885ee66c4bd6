"""A discovery answer that changes one instance of a large service costs the pool work
for that instance, not a re-derivation of every endpoint's address.

The pool compared each listed instance's ``address`` with its endpoint's instance's, both
``Instance.address``, a property that formats ``host:port`` (IPv6 brackets, zone escapes)
at each read: two per endpoint per answer. Measured with 2,000 endpoints, one instance
moved: 2.5 ms of the 4.5 ms an answer cost the pool, at every answer (a Consul or local
registry answers in full at each change; 50 such services churning once a second spent
that on each). Now host and port are compared first (the address only when the host is
written otherwise), against the endpoint's address worked out once: 2.7 ms in all.

Counted, not timed: the ``host:port`` formatting is counted while the pool takes in an
answer."""

from __future__ import annotations

import pytest

import meshkit
import meshkit.discovery._types as types
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry as _Registry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ENDPOINTS = 2000


def _inst(i: int, port: int = 9, host: str = "127.0.0.1") -> Instance:
    return Instance(service="big", instance_id=f"i{i:04d}", host=host, port=port)


async def test_an_answer_moving_one_instance_formats_no_other_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One instance of 2,000 moves to another port: a handful of ``host:port`` formats
    (the moved one's), not two per endpoint; the pool follows the answer (the moved
    endpoint replaced, every other one kept), and a host written otherwise for the same
    address keeps its endpoint."""
    registry = _Registry()
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        listed = [_inst(i) for i in range(_ENDPOINTS)]
        registry.answers.put_nowait(frozenset(listed))
        await until(lambda: len(pool.endpoints) == _ENDPOINTS, timeout_s=30,
                    what="every endpoint in the pool")
        before = dict(pool.endpoints)
        formatted = [0]
        real = types.uri_host

        def counting(host: str) -> str:
            formatted[0] += 1
            return real(host)

        monkeypatch.setattr(types, "uri_host", counting)
        listed[7] = _inst(7, port=10)
        pool.apply(frozenset(listed))
        assert formatted[0] <= 10, f"{formatted[0]} addresses formatted for one move"
        assert pool.endpoints["i0007"] is not before["i0007"]
        assert pool.endpoints["i0007"].address == "127.0.0.1:10"
        assert all(pool.endpoints[k] is ep for k, ep in before.items() if k != "i0007")
    # the same address written otherwise ("::1" and "[::1]"): the endpoint stays
    registry = _Registry()
    async with meshkit.dial("big", registry=registry, options=opts) as ch:
        pool = ch._pool
        registry.answers.put_nowait(frozenset({_inst(1, host="::1")}))
        await until(lambda: len(pool.endpoints) == 1, timeout_s=30, what="the endpoint")
        ep = pool.endpoints["i0001"]
        pool.apply(frozenset({_inst(1, host="[::1]")}))
        assert pool.endpoints["i0001"] is ep
        assert ep.instance.host == "[::1]"  # its instance follows the answer
