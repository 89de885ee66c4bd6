"""A renewed client certificate (``rebuild_sub_channels()``) is make-before-break: an
endpoint's new sub-channel takes calls only once it has connected, so a renewal neither
stalls calls for a handshake nor, when the new connection cannot be made (a server that
refuses the renewed certificate, a partition), fails calls that the established
connection still carries. grpc-go's and Envoy's credential reloads leave established
connections alone in the same way.

Before, every endpoint dropped to CONNECTING at the renewal: calls waited for the new
handshake, and a new connection that never came up failed every call of the channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.balancer import EndpointState
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, method, raw_server
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until


@contextlib.asynccontextmanager
async def renewing(registry: LocalRegistry, n: int = 1) -> AsyncIterator[
        tuple[Any, list[TcpProxy], Callable[[TcpProxy], None]]]:
    """A channel to ``n`` raw echo servers, each registered behind its own proxy (the
    established connections) and warmed up (READY); yields the channel, a second proxy
    per server that is started and blackholed, and ``route(p)``: the sub-channels a
    rebuild makes from then on connect through ``p`` (one for every endpoint)."""
    async with contextlib.AsyncExitStack() as stack:
        seconds: list[TcpProxy] = []
        for i in range(n):
            _, port = await stack.enter_async_context(raw_server(handler(f"e{i}")))
            first = await stack.enter_async_context(TcpProxy("127.0.0.1", port))
            second = await stack.enter_async_context(TcpProxy("127.0.0.1", port))
            second.blackhole()
            seconds.append(second)
            await registry.register(Instance(service="echo", instance_id=f"e{i}",
                                             host="127.0.0.1", port=first.port))
        opts = meshkit.DialOptions(insecure=True, retry=None, drain_timeout_s=0.2)
        ch = await stack.enter_async_context(
            meshkit.dial("echo", registry=registry, options=opts))
        await ch.wait_for_endpoints(n)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(4 * n):
            await unary(b"warm", timeout=5)
        await until(lambda: all(e.state is EndpointState.READY for e in ch.endpoints()),
                    timeout_s=10, what="every endpoint READY")
        pool = ch._pool
        made = pool._make_channel
        by_port = {e.instance.port: i for i, e in enumerate(
            sorted(ch.endpoints(), key=lambda e: e.key))}

        def route(p: TcpProxy | None = None) -> None:
            def make(address: str) -> grpc.aio.Channel:
                port = int(address.rsplit(":", 1)[1])
                target = p if p is not None else seconds[by_port[port]]
                return made(target.address)
            pool._make_channel = make

        route()
        yield ch, seconds, route


@pytest.mark.timeout(60)
async def test_a_renewal_keeps_every_endpoint_ready_until_its_new_connection_is(
    registry: LocalRegistry,
) -> None:
    """Right after the renewal, and while the new connections are being made (here:
    held in a partition), every endpoint stays READY and calls go over the established
    connections at once; once the new connections are up, calls go over them and the
    old sub-channels are closed."""
    async with renewing(registry, n=2) as (ch, seconds, _):
        unary = ch.unary_unary(method("Unary"))
        ch.rebuild_sub_channels()
        assert [e.state for e in ch.endpoints()] == [EndpointState.READY] * 2
        for _ in range(10):  # the new connections are held: the old ones serve
            assert (await unary(b"x", timeout=2)).endswith(b"|x")
        assert [e.state for e in ch.endpoints()] == [EndpointState.READY] * 2
        before = [p.accepted for p in seconds]
        assert all(before), "the rebuild did not start a new connection"
        for p in seconds:
            await p.start()  # the partition heals: the new connections come up
        await until(lambda: not ch._pool._draining, timeout_s=20,
                    what="the old sub-channels closed once the new ones connected")
        for _ in range(10):
            assert (await unary(b"y", timeout=2)).endswith(b"|y")
        assert all(p.open_connections for p in seconds), "calls not on the new connections"
        assert [e.state for e in ch.endpoints()] == [EndpointState.READY] * 2


@pytest.mark.timeout(60)
async def test_a_renewal_whose_new_connection_is_refused_keeps_the_established_one(
    registry: LocalRegistry,
) -> None:
    """The new sub-channel cannot connect (refused): calls keep going over the
    established connection, one warning says so (not one per reconnection attempt), and
    the new sub-channel is taken into use once it does connect."""
    async with renewing(registry) as (ch, seconds, _):
        unary = ch.unary_unary(method("Unary"))
        await seconds[0].stop()  # refused from now on
        with structlog.testing.capture_logs() as logs:
            ch.rebuild_sub_channels()
            for _ in range(20):
                assert (await unary(b"x", timeout=2)).endswith(b"|x")
                await asyncio.sleep(0.05)
        (ep,) = ch.endpoints()
        assert ep.state is EndpointState.READY
        warned = [e for e in logs if "could not connect" in e["event"]]
        assert len(warned) == 1, logs
        assert warned[0]["log_level"] == "warning" and warned[0]["instance_id"] == "e0"
        first = ch._pool.conns["e0"]
        assert "e0" in ch._pool._pending, "no pending sub-channel while it was refused"
        await seconds[0].start()  # the new address answers again: taken into use
        await until(lambda: ch._pool.conns["e0"] is not first, timeout_s=20,
                    what="the new sub-channel in use once it connected")
        assert (await unary(b"y", timeout=5)).endswith(b"|y")
        assert seconds[0].open_connections


@pytest.mark.timeout(60)
async def test_the_established_connection_ending_hands_over_to_the_new_sub_channel(
    registry: LocalRegistry,
) -> None:
    """While the new sub-channel is still connecting, the established connection ends
    (its server restarted behind it): the endpoint goes over to the new sub-channel at
    once, and calls made with ``wait_for_ready`` are answered once it connects, not
    held on a sub-channel that is gone."""
    async with renewing(registry) as (ch, seconds, _):
        unary = ch.unary_unary(method("Unary"))
        ch.rebuild_sub_channels()
        pool = ch._pool
        first = pool.conns["e0"]
        assert "e0" in pool._pending
        await first.channel.close()  # the established connection is gone for good
        await until(lambda: pool.conns["e0"] is not first, timeout_s=10,
                    what="the endpoint handed over to its new sub-channel")
        assert "e0" not in pool._pending
        call = asyncio.ensure_future(unary(b"z", timeout=10, wait_for_ready=True))
        await asyncio.sleep(0.3)
        await seconds[0].start()
        assert (await asyncio.wait_for(call, 10)).endswith(b"|z")


@pytest.mark.timeout(60)
async def test_a_second_renewal_replaces_a_pending_sub_channel_and_close_ends_it(
    registry: LocalRegistry,
) -> None:
    """A renewal while the last one's sub-channel is still connecting replaces it (the
    older one is closed, never used); leaving the registry and closing the channel
    close a pending sub-channel too."""
    async with renewing(registry) as (ch, _seconds, _):
        pool = ch._pool
        ch.rebuild_sub_channels()
        pending1 = pool._pending["e0"][0]
        ch.rebuild_sub_channels()
        pending2 = pool._pending["e0"][0]
        assert pending2 is not pending1
        await until(lambda: pending1.channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN,
                    timeout_s=10, what="the first pending sub-channel closed")
        await registry.deregister(next(iter(pool.endpoints.values())).instance)
        await until(lambda: "e0" not in pool._pending, timeout_s=10,
                    what="the pending sub-channel dropped with its endpoint")
        await until(lambda: pending2.channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN,
                    timeout_s=10, what="the second pending sub-channel closed")
