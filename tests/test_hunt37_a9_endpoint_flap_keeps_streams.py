"""An endpoint that leaves the registry and comes back at the same address (a flap: a
lease or TTL that lapsed under load and was renewed, a health check that failed once)
while a stream runs on it: the server never went away, but the stream was cut
``UNAVAILABLE`` "its endpoint left and drain_timeout_s ran out" once the grace of its
departure ran out, though its endpoint was back long before. Now the sub-channel of an
endpoint that comes back (same instance, same address) within its grace is kept until
its own calls end, as a sub-channel replaced by a certificate renewal is; an endpoint
that stays away, or comes back elsewhere, still has its streams cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import SERVICE, method, raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(40)
_DRAIN_S = 0.3


def _handler(release: asyncio.Event) -> grpc.GenericRpcHandler:
    """``ServerStream`` sends ``0``, waits for ``release`` (at most 20 s), sends ``end``."""

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"0"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 20)
        yield b"end"

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerStream": grpc.unary_stream_rpc_method_handler(stream)})


@contextlib.asynccontextmanager
async def _setup(registry: LocalRegistry) -> AsyncIterator[
        tuple[meshkit.MeshChannel, asyncio.Event, Instance, int]]:
    release = asyncio.Event()
    async with raw_server(_handler(release)) as (_, port):
        inst = Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port)
        await registry.register(inst)
        opts = meshkit.DialOptions(insecure=True, drain_timeout_s=_DRAIN_S)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            yield ch, release, inst, port


async def _flap(ch: meshkit.MeshChannel, registry: LocalRegistry, inst: Instance) -> None:
    await registry.deregister(inst)
    await until(lambda: not ch.endpoints(), what="the endpoint gone")
    await registry.register(inst)
    await ch.wait_for_endpoints(1)


async def test_a_stream_survives_its_endpoint_flapping(registry: LocalRegistry) -> None:
    """The endpoint leaves and comes back at once: its stream runs on past the grace and
    ends ``OK``; a new call works meanwhile."""
    async with _setup(registry) as (ch, release, inst, _port):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"0"
        await _flap(ch, registry, inst)
        await asyncio.sleep(_DRAIN_S * 4)  # well past the grace of its departure
        assert not call.done()
        other = ch.unary_stream(method("ServerStream"))(b"y", timeout=20)
        assert await other.read() == b"0"
        release.set()
        assert await asyncio.wait_for(call.read(), 10) == b"end"
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
        assert await asyncio.wait_for(other.read(), 10) == b"end"
        assert await other.code() is grpc.StatusCode.OK


async def test_a_stream_of_a_flapped_endpoint_that_leaves_again_is_cut(
        registry: LocalRegistry) -> None:
    """Kept after the flap, the stream is cut once its endpoint leaves for good."""
    async with _setup(registry) as (ch, _release, inst, _port):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"0"
        await _flap(ch, registry, inst)
        await registry.deregister(inst)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "drain_timeout_s" in (info.value.details() or "")


async def test_a_stream_of_an_endpoint_back_at_another_address_is_cut(
        registry: LocalRegistry) -> None:
    """The instance back at another address: its old connection is not kept."""
    release2 = asyncio.Event()
    async with _setup(registry) as (ch, _release, inst, _port), \
            raw_server(_handler(release2)) as (_, port2):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"0"
        await registry.deregister(inst)
        await until(lambda: not ch.endpoints(), what="the endpoint gone")
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port2))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        release2.set()
