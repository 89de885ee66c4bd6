"""A draining refusal takes its endpoint out of picking for a bounded time only.

fde1f934 takes an endpoint out of picking at a draining refusal (``UNAVAILABLE`` "server
draining" + ``meshkit-nack: 1``) until its connection changes: a meshkit server's stop
follows its refusal phase within 0.5 s and ends the connection. But an endpoint whose
connection goes on after such a refusal (an L7 proxy passing one drained backend's answer
through, a server of another make answering so and serving on) was kept out for as long
as that connection lived, with an unchanged registry: for good. It comes back after
``meshkit._pool.LEAVING_HOLD_S`` now when nothing changed meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
import meshkit._pool
from meshkit.discovery import Instance
from meshkit.resilience._retry import DRAINING_DETAILS, NACK_METADATA
from tests.support.echo import SERVICE, method

pytestmark = pytest.mark.timeout(60)


class _FrozenView:
    """A registry view that never changes after its first answer."""

    def __init__(self, instances: frozenset[Instance]) -> None:
        self._instances = instances

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        yield self._instances
        await asyncio.Event().wait()


async def test_an_endpoint_whose_connection_goes_on_after_a_refusal_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One endpoint refuses one call as a draining server and then serves on over the
    same connection: out of picking at once (TRANSIENT_FAILURE), back within the hold
    (READY, a call answered), not out for good."""
    monkeypatch.setattr(meshkit._pool, "LEAVING_HOLD_S", 0.5, raising=False)
    calls: list[int] = []

    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS,
                                (NACK_METADATA,))
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        view = _FrozenView(frozenset({Instance(service="echo", instance_id="p",
                                               host="127.0.0.1", port=port)}))
        opts = meshkit.DialOptions(insecure=True, outlier=None, retry=None)
        async with meshkit.dial("echo", registry=view, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call = ch.unary_unary(method("Unary"))
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await asyncio.wait_for(call(b"x", timeout=5), 10)
            assert first.value.code() is grpc.StatusCode.UNAVAILABLE
            assert ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            end = time.monotonic() + 15
            while ch.get_state() is not grpc.ChannelConnectivity.READY:
                assert time.monotonic() < end, (
                    f"the endpoint stayed out of picking ({ch.get_state()})")
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(call(b"y", timeout=5), 10) == b"y"
            assert len(calls) == 2
    finally:
        await server.stop(None)
