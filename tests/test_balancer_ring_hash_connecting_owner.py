"""Ring hash through dial(): a call whose key's owner is still connecting waits for that
connection, and when it fails goes to the next endpoint on the ring, as gRFC A42's
picker does ("if the subchannel is CONNECTING, queue the pick"; one in
TRANSIENT_FAILURE is passed over for the next ring entry). The channel sent it on to the
connecting sub-channel at once while another endpoint was READY, where grpc failed it
``UNAVAILABLE`` when the connection failed, although the next owner was healthy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

import meshkit
from meshkit.balancer import Endpoint, EndpointState, RingHash
from meshkit.discovery import Instance, LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until

_HOLD_S = 3.0  # how long the silent server keeps a connection in CONNECTING


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts, says nothing for ``_HOLD_S`` (the client's gRPC
    connection stays CONNECTING, waiting for HTTP/2 settings), then closes; its port."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await asyncio.sleep(_HOLD_S)
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


def _owner(ids: list[str], key: str) -> str:
    """The ring hash owner of ``key`` among instances ``ids`` (the ring depends on the
    instance ids and weights only)."""
    rh = RingHash()
    eps = []
    for i in ids:
        e = Endpoint(Instance(service="echo", instance_id=i, host="127.0.0.1", port=1))
        e.state = EndpointState.READY
        eps.append(e)
    rh.update(eps)
    got = rh.pick(key)
    assert got is not None
    return got[0].key


@pytest.mark.timeout(60)
async def test_a_keyed_call_whose_owner_fails_to_connect_goes_to_the_next_owner(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Instances ``live`` (an echo server) and ``silent`` (accepts, holds each connection
    in CONNECTING for 3 s, then closes it); a call keyed to ``silent`` while ``live`` is
    READY and ``silent`` connecting: answered by ``live`` once the connection fails,
    where it failed UNAVAILABLE "failed to connect to all addresses"."""
    await echo_servers("live")
    key = next(k for k in (f"user-{n}" for n in range(1000))
               if _owner(["live", "silent"], k) == "silent")
    async with _silent_server() as port:
        await registry.register(Instance(service="echo", instance_id="silent",
                                         host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(insecure=True, balancer=RingHash, retry=None,
                                   hash_key_metadata="x-user")
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            pool = ch._pool
            await until(lambda: len(pool.endpoints) == 2, timeout_s=10, what="both found")
            live, silent = pool.endpoints["live"], pool.endpoints["silent"]
            unary = ch.unary_unary(method("Unary"))
            # a call without a key connects "live"
            assert (await unary(b"x", timeout=10)).startswith(b"live|")
            await until(lambda: live.state is EndpointState.READY
                        and silent.state is EndpointState.IDLE,
                        timeout_s=20, what="live READY while silent is connecting")
            t0 = time.monotonic()
            got = await unary(b"k", timeout=20, metadata=[("x-user", key)])
            took = time.monotonic() - t0
        await registry.deregister(Instance(service="echo", instance_id="silent",
                                           host="127.0.0.1", port=port))
    assert got.startswith(b"live|"), got
    assert took < 15.0, took
