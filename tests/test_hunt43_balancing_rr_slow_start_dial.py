"""RoundRobin's slow start through a dialled channel (outlier ejection around it, the
pool's first-answer word through it): the first answer's endpoints share calls evenly
at once, an instance added later takes a small share at first (loopback servers)."""

from __future__ import annotations

import functools

import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import Instance
from tests.support.echo import handler, method, raw_server
from tests.support.registries import QueueRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


def _inst(name: str, port: int) -> Instance:
    return Instance(service="echo", instance_id=name, host="127.0.0.1", port=port)


async def test_a_later_instance_ramps_through_the_channel() -> None:
    served: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    async with (raw_server(handler("a", served=served["a"])) as (_, pa),
                raw_server(handler("b", served=served["b"])) as (_, pb),
                raw_server(handler("c", served=served["c"])) as (_, pc)):
        registry = QueueRegistry()
        opts = meshkit.DialOptions(
            insecure=True, retry=None,
            balancer=functools.partial(RoundRobin, slow_start_s=30.0))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            call = ch.unary_unary(method("Unary"))
            registry.answers.put_nowait(frozenset([_inst("a", pa), _inst("b", pb)]))
            pool = ch._pool
            await until(lambda: pool.ready_count == 2, timeout_s=20, what="a, b READY")
            for _ in range(100):
                await call(b"x", timeout=10)
            assert abs(len(served["a"]) - len(served["b"])) <= 2  # no ramp at first
            registry.answers.put_nowait(frozenset([_inst("a", pa), _inst("b", pb),
                                                   _inst("c", pc)]))
            await until(lambda: pool.ready_count == 3, timeout_s=20, what="c READY")
            for _ in range(300):
                await call(b"x", timeout=10)
            # fair: 100 of 300; weight 0.1 at first (ramping over 30 s): about 15
            assert len(served["c"]) < 60, f"c took {len(served['c'])} of 300 at once"
