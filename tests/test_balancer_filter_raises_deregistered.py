"""A DialOptions.filters filter that raises keeps the channel's last endpoints
(0aaa5bb), but not one the registry no longer lists: an instance that deregistered (a
server draining before it stops, an instance that moved) must get no new call, as it
would with the filter working (a filter only narrows the registry's answer). Before,
it kept getting its share of the calls for as long as the filter failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import Instance, LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until


class _BreaksAfterFirst:
    """A filter that keeps every instance at its first run and raises from then on."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        self.runs += 1
        if self.runs > 1:
            raise ValueError("broken after the first answer")
        return list(instances)

    def __repr__(self) -> str:
        return "BreaksAfterFirst()"


@pytest.mark.timeout(60)
async def test_a_deregistered_instance_leaves_the_pool_while_the_filter_fails(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    await echo_servers("a")
    await echo_servers("b")

    async def both() -> bool:
        return len(await registry.instances("echo")) == 2

    await until(both, timeout_s=10, what="a and b registered")
    flt = _BreaksAfterFirst()
    opts = meshkit.DialOptions(insecure=True, filters=(flt,), balancer=RoundRobin,
                               retry=None)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        unary: Any = ch.unary_unary(method("Unary"))
        got = {(await unary(b"", timeout=10))[:2] for _ in range(10)}
        assert got == {b"a|", b"b|"}, got
        b = next(i for i in await registry.instances("echo") if i.instance_id == "b")
        await registry.deregister(b)  # b's server still answers (it is draining)
        await until(lambda: flt.runs >= 2, timeout_s=10, what="the answer without b")
        await until(lambda: "b" not in ch._pool.endpoints, timeout_s=5,
                    what="b out of the pool")
        answered = [(await unary(b"", timeout=10))[:2] for _ in range(20)]
        # a (still registered) is kept: the filter's last choice
        assert set(answered) == {b"a|"}, answered
