"""Ring hash through dial(), the wait of a call whose key's owner is still connecting
while another endpoint is READY (49e613c, gRFC A42's queued pick): it is bounded by the
call's deadline (DEADLINE_EXCEEDED at the deadline, not after the 10 s cap), with or
without ``wait_for_ready``; a call cancelled while it waits leaves no waiter behind; and
an owner removed from discovery while the call waits sends it on to the next owner at
once, not when the connection attempt ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import EndpointState, RingHash
from meshkit.channel import MeshChannel
from meshkit.discovery import Instance, LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until
from tests.test_balancer_ring_hash_connecting_owner import _owner


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and says nothing (the client's gRPC connection stays
    CONNECTING, waiting for HTTP/2 settings) until the test ends; its port."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await asyncio.sleep(60)
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def _keyed_to_connecting_owner(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> AsyncIterator[tuple[MeshChannel, str, Instance]]:
    """``live`` READY and ``silent`` CONNECTING (a server that never answers), a key
    whose owner is ``silent``: the channel, the key and ``silent``'s instance."""
    await echo_servers("live")
    key = next(k for k in (f"user-{n}" for n in range(1000))
               if _owner(["live", "silent"], k) == "silent")
    async with _silent_server() as port:
        inst = Instance(service="echo", instance_id="silent", host="127.0.0.1", port=port)
        await registry.register(inst)
        opts = meshkit.DialOptions(insecure=True, balancer=RingHash, retry=None,
                                   hash_key_metadata="x-user")
        try:
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                pool = ch._pool
                await until(lambda: len(pool.endpoints) == 2, timeout_s=10,
                            what="both found")
                unary: Any = ch.unary_unary(method("Unary"))
                assert (await unary(b"x", timeout=10)).startswith(b"live|")
                live = pool.endpoints["live"]
                await until(lambda: live.state is EndpointState.READY, timeout_s=20,
                            what="live READY")
                yield ch, key, inst
        finally:
            with contextlib.suppress(Exception):
                await registry.deregister(inst)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wait_for_ready", [False, True])
async def test_the_wait_for_a_connecting_owner_ends_at_the_call_s_deadline(
    registry: LocalRegistry, echo_servers: EchoFactory, wait_for_ready: bool,
) -> None:
    """A 1 s deadline, the owner connecting for far longer: DEADLINE_EXCEEDED at about
    1 s, not after the 10 s cap, nor UNAVAILABLE."""
    async with _keyed_to_connecting_owner(registry, echo_servers) as (ch, key, _inst):
        unary: Any = ch.unary_unary(method("Unary"))
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(b"k", timeout=1.0, metadata=[("x-user", key)],
                        wait_for_ready=wait_for_ready)
        took = time.monotonic() - t0
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err.value
    assert 0.5 < took < 6.0, took


@pytest.mark.timeout(60)
async def test_a_call_cancelled_while_it_waits_for_the_owner_leaves_no_waiter(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """A keyed call waiting for its connecting owner is cancelled: it ends CANCELLED,
    and the pool has no waiter left on its change event (nothing leaked per call)."""
    async with _keyed_to_connecting_owner(registry, echo_servers) as (ch, key, _inst):
        pool = ch._pool
        unary: Any = ch.unary_unary(method("Unary"))
        calls = [asyncio.ensure_future(unary(b"k", timeout=30, metadata=[("x-user", key)]))
                 for _ in range(5)]
        await until(lambda: len(pool._changed._waiters) >= 5, timeout_s=10,
                    what="the calls waiting for the owner")
        for c in calls:
            c.cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        await until(lambda: not pool._changed._waiters, timeout_s=10,
                    what="no waiter left")
        # the channel still works, for a key owned by live
        assert (await unary(b"x", timeout=10)).startswith(b"live|")


@pytest.mark.timeout(60)
async def test_an_owner_removed_while_a_call_waits_sends_it_to_the_next_owner(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """The connecting owner is deregistered while a keyed call waits for it: the call
    is answered by ``live`` soon after, not when the 10 s cap ends its wait."""
    async with _keyed_to_connecting_owner(registry, echo_servers) as (ch, key, inst):
        pool = ch._pool
        unary: Any = ch.unary_unary(method("Unary"))
        call = asyncio.ensure_future(unary(b"k", timeout=30, metadata=[("x-user", key)]))
        await until(lambda: len(pool._changed._waiters) >= 1, timeout_s=10,
                    what="the call waiting for the owner")
        t0 = time.monotonic()
        await registry.deregister(inst)
        got = await asyncio.wait_for(call, 20)
        took = time.monotonic() - t0
    assert got.startswith(b"live|"), got
    assert took < 7.0, took
