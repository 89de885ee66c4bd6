"""Hedging on a fresh channel whose endpoints are still connecting: each attempt keeps
to its own endpoint while the connections come up one by one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import Backoff, BudgetOptions, RetryOptions, RetryPolicy
from tests.support.echo import SERVICE, method, raw_server
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until


class _StartAtFirst:
    """An rng for RoundRobin whose turn starts at the first endpoint."""

    def randrange(self, n: int) -> int:
        return 0


def _held(name: str, served: dict[str, int], release: asyncio.Event) -> grpc.GenericRpcHandler:
    """The echo service's ``Unary`` on ``name``: counts the call, answers on ``release``."""

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        served[name] += 1
        await release.wait()
        return name.encode()

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary)})


@contextlib.asynccontextmanager
async def _held_back(names: tuple[str, ...], served: dict[str, int], release: asyncio.Event,
                     registry: LocalRegistry) -> AsyncIterator[dict[str, TcpProxy]]:
    """An echo server per name behind a proxy that accepts connections but moves no byte
    until the test starts it (the client's connection stays CONNECTING); registered."""
    async with contextlib.AsyncExitStack() as stack:
        proxies: dict[str, TcpProxy] = {}
        for name in names:
            _, port = await stack.enter_async_context(
                raw_server(_held(name, served, release)))
            proxy = await stack.enter_async_context(TcpProxy("127.0.0.1", port))
            proxy.blackhole()
            proxies[name] = proxy
            await registry.register(Instance(service="echo", instance_id=name,
                                             host="127.0.0.1", port=proxy.port))
        try:
            yield proxies
        finally:
            release.set()


@pytest.mark.parametrize("balancer", ["round_robin", "p2c"])
async def test_hedges_waiting_for_connections_keep_to_their_own_endpoints(
    registry: LocalRegistry, balancer: str,
) -> None:
    """With hedge_delay_s=0 on a fresh channel, an attempt waiting for its endpoint's
    connection does not take the endpoint a sibling attempt is waiting on when that one
    connects first: three attempts reach three servers, one each."""
    served = dict.fromkeys(("a", "b", "c"), 0)
    release = asyncio.Event()
    policy = RetryPolicy(idempotent=True, hedge_delay_s=0, max_attempts=3,
                         backoff=Backoff(base_delay_s=0.001, max_delay_s=0.002))
    kw: dict[str, object] = {"balancer": lambda: RoundRobin(
        rng=_StartAtFirst())} if balancer == "round_robin" else {}  # type: ignore[arg-type]
    opts = meshkit.DialOptions(insecure=True, outlier=None, retry=RetryOptions(
        default=policy, budget=BudgetOptions()), **kw)  # type: ignore[arg-type]
    async with _held_back(("a", "b", "c"), served, release, registry) as proxies, \
            meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = asyncio.ensure_future(ch.unary_unary(method("Unary"))(b"z", timeout=5))
        try:
            assert ch.retry is not None
            # every attempt sent and each waiting for a connection (held by its proxy)
            await until(lambda: ch.retry.stats.hedges == 2  # type: ignore[union-attr]
                        and all(p.accepted for p in proxies.values()), timeout_s=5)
            await asyncio.sleep(0)  # (the last hedge's first step: its pick)
            for name in ("b", "a", "c"):  # one connection up at a time
                await proxies[name].start()
                await until(lambda n=name: any(  # type: ignore[misc]
                    e.key == n and e.state.name == "READY" for e in ch.endpoints()),
                    timeout_s=5)
            await until(lambda: sum(served.values()) >= 3, timeout_s=5)
            assert served == {"a": 1, "b": 1, "c": 1}
            release.set()
            assert await asyncio.wait_for(call, 5) in (b"a", b"b", b"c")
        finally:
            release.set()
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
