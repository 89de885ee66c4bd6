"""Retry rules at their edges through a real channel (dial()) and real grpc.aio servers on
loopback: a stream-unary request spent by its first attempt, the backoff after a server's
pushback (gRFC A6), and which attempt a failed hedged call reports."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, BudgetOptions, RetryOptions, RetryPolicy

FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)
CUSTOM = "meshkit.test.Custom"


def custom(name: str) -> str:
    return f"/{CUSTOM}/{name}"


class LongestDelay(random.Random):
    """A random source whose jitter always picks the longest delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


def opts(policy: RetryPolicy | None = None, budget: BudgetOptions | None = None,
         **kw: Any) -> meshkit.DialOptions:
    retry = RetryOptions(default=policy, budget=budget or BudgetOptions())
    kw.setdefault("outlier", None)
    return meshkit.DialOptions(insecure=True, retry=retry, **kw)


async def start_custom(registry: LocalRegistry, instance_id: str,
                     handlers: dict[str, grpc.RpcMethodHandler]) -> meshkit.MeshServer:
    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(CUSTOM, handlers),))

    srv = meshkit.MeshServer("echo", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True,
                                                          instance_id=instance_id,
                                                          drain_delay_s=0.0, grace_s=1.0))
    await srv.start()
    return srv


@pytest.mark.parametrize("shape", ["generator", "list"])
async def test_a_stream_unary_request_is_retried_only_when_it_can_be_sent_again(
    registry: LocalRegistry, shape: str
) -> None:
    """A stream-unary call is retried "whole" only "with a re-iterable request"
    (meshkit/resilience/_retry.py module docstring): a list is sent again whole; a one-shot
    generator was consumed by the first attempt, and a retry sent the server an empty
    request stream and handed the caller the answer to a request it never made."""
    calls: list[list[bytes]] = []

    async def join(requests: AsyncIterator[bytes], context: Any) -> bytes:
        parts = [r async for r in requests]
        calls.append(parts)
        if len(calls) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return b",".join(parts)

    def generator() -> Any:
        yield b"a"
        yield b"b"

    srv = await start_custom(registry, "h1", {
        "Join": grpc.stream_unary_rpc_method_handler(join)})
    try:
        policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)
        async with meshkit.dial("echo", registry=registry, options=opts(policy)) as ch:
            await ch.wait_for_endpoints(1)
            request = generator() if shape == "generator" else [b"a", b"b"]
            join_call = ch.stream_unary(custom("Join"))(request, timeout=5)
            if shape == "list":
                assert await asyncio.wait_for(join_call, 5) == b"a,b"
                assert calls == [[b"a", b"b"], [b"a", b"b"]]
            else:  # not retried: the first failure is the caller's
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(join_call, 5)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                assert calls == [[b"a", b"b"]]
    finally:
        await srv.drain()


async def test_backoff_resets_to_the_initial_delay_after_a_servers_pushback(
    registry: LocalRegistry
) -> None:
    """gRFC A6, "Summary of Retry and Hedging Logic", 5.1: "Pushback: Retry in n ms. If
    this attempt also fails, retry delay will reset to initial backoff for the following
    retry". After a retry the server pushed back (here 0 ms) the next delay is drawn
    from [0, initialBackoff], not from the third attempt's exponential cap."""
    count = 0

    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal count
        count += 1
        if count == 1:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", "0"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "pushed back")
        if count == 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "still down")
        return b"ok"

    srv = await start_custom(registry, "h1", {"Get": grpc.unary_unary_rpc_method_handler(get)})
    try:
        # initial backoff 0.1 s, the next cap 2.0 s; the jitter always takes the cap
        backoff = Backoff(base_delay_s=0.1, max_delay_s=5.0, multiplier=20.0,
                          rng=LongestDelay())
        policy = RetryPolicy(idempotent=True, max_attempts=3, backoff=backoff)
        async with meshkit.dial("echo", registry=registry, options=opts(policy)) as ch:
            await ch.wait_for_endpoints(1)
            t0 = time.monotonic()
            got = await asyncio.wait_for(ch.unary_unary(custom("Get"))(b"", timeout=10), 8)
            took = time.monotonic() - t0
        assert got == b"ok" and count == 3
        assert took < 1.0, f"waited {took:.2f} s: the backoff did not reset after pushback"
    finally:
        await srv.drain()


async def test_hedged_call_failure_reports_the_failing_attempts_metadata(
    registry: LocalRegistry
) -> None:
    """A hedged call that ends with a fatal status from one attempt (the others being
    cancelled) must report that attempt's trailing/initial metadata next to its code and
    details, not those of a hedge the mesh cancelled (the call object's contract: metadata
    "of the attempt the call settled on")."""
    count = 0

    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal count
        count += 1
        if count == 1:  # the first attempt: answers NOT_FOUND after the hedge went out
            await context.send_initial_metadata((("x-attempt", "first"),))
            await asyncio.sleep(0.3)
            context.set_trailing_metadata((("x-why", "no-such-order"),))
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        await asyncio.sleep(5)  # the hedge: slow
        return b"late"

    handlers = {"Get": grpc.unary_unary_rpc_method_handler(get)}
    servers = [await start_custom(registry, "h1", handlers),
               await start_custom(registry, "h2", handlers)]
    try:
        policy = RetryPolicy(idempotent=True, hedge_delay_s=0.05, max_attempts=2)
        async with meshkit.dial("echo", registry=registry,
                                options=opts(policy, balancer=RoundRobin)) as ch:
            await ch.wait_for_endpoints(2)
            call = ch.unary_unary(custom("Get"))(b"", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 5)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
            assert ("x-why", "no-such-order") in list(info.value.trailing_metadata())
            assert await call.code() is grpc.StatusCode.NOT_FOUND
            trailing = list(await asyncio.wait_for(call.trailing_metadata(), 5))
            initial = list(await asyncio.wait_for(call.initial_metadata(), 5))
            assert ("x-why", "no-such-order") in trailing, trailing
            assert ("x-attempt", "first") in initial, initial
    finally:
        for srv in servers:
            await srv.drain()


async def test_a_retry_that_finds_no_endpoint_reports_its_own_error(
    registry: LocalRegistry
) -> None:
    """A call whose retry finds no endpoint (here the balancer has none after the first
    pick; an ejected endpoint still takes calls when nothing else is left, panic routing,
    so ejection alone no longer leaves a retry without one) ends with that error: its
    code, details and metadata are the mesh's, not a mix with the first attempt's
    trailing metadata."""
    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-from", "h1"),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        raise AssertionError("unreachable")

    srv = await start_custom(registry, "h1", {"Get": grpc.unary_unary_rpc_method_handler(get)})
    try:
        policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)
        picks: list[int] = []

        class OnePick(RoundRobin):
            def pick(self, key: str | None = None, exclude: Any = ()) -> Any:
                picks.append(1)
                return super().pick(key, exclude) if len(picks) == 1 else None

        options = opts(policy, balancer=OnePick)
        async with meshkit.dial("echo", registry=registry, options=options) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_unary(custom("Get"))(b"", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 5)
            assert "endpoint" in (info.value.details() or ""), info.value.details()
            assert await call.details() == info.value.details()
            trailing = list(await asyncio.wait_for(call.trailing_metadata(), 5))
            assert ("x-from", "h1") not in trailing, trailing
    finally:
        await srv.drain()


async def test_a_hedged_call_settles_on_the_attempt_that_answered() -> None:
    """The winning attempt's call is read in the step it answered: another hedge launched
    in between (it sets ``details.last_call``) must not become the call the caller's call
    object settles on (its code would read CANCELLED once the mesh cancels that hedge)."""
    from meshkit.interceptors import CallKind, ClientCallDetails
    from meshkit.resilience import RetryInterceptor

    details = ClientCallDetails(service="echo", method="/x.Y/Z", kind=CallKind.UNARY_UNARY,
                                timeout_s=5.0, metadata=None)
    sent = []

    async def proceed(d: ClientCallDetails, request: Any) -> Any:
        sent.append(len(sent) + 1)
        if len(sent) == 1:
            await asyncio.sleep(0.2)
            d.last_call = "winner"
            # another hedge launches right after, before the hedging loop looks
            asyncio.get_running_loop().call_soon(setattr, d, "last_call", "late hedge")
            return b"answer"
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, hedge_delay_s=0.05, max_attempts=2)))
    assert await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5) == b"answer"
    assert sent == [1, 2]
    assert details.last_call == "winner"
