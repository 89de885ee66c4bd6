"""A stream the mesh cancels (its channel closed while it was open) ends its reader with
``MeshRpcError`` ``CANCELLED`` "stream to 'echo' cancelled: the channel was closed or its
endpoint left", as a unary call in flight gets; the call's ``details()`` now says the same,
as the unary call's does. It said grpc.aio's "Locally cancelled by application!" (the
attempt's, cancelled by the mesh), so a caller logging the outcome blamed the
application for the channel's close. Real server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import MeshRpcError
from tests.support.echo import SERVICE, handler, method, raw_server


async def _one_then_wait(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    await asyncio.sleep(30)


@pytest.mark.parametrize("use", ["read", "iterate"])
async def test_details_of_a_stream_the_mesh_cancelled(registry: LocalRegistry,
                                                      use: str) -> None:
    slow = grpc.method_handlers_generic_handler(
        SERVICE, {"OneThenWait": grpc.unary_stream_rpc_method_handler(_one_then_wait)})
    async with raw_server(handler("e1"), slow) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True))
        await ch.wait_for_endpoints(1)
        stream = ch.unary_stream(f"/{SERVICE}/OneThenWait")(b"")
        unary = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"10000"))
        iterator = stream.__aiter__()
        if use == "read":
            assert await stream.read() == b"first"
        else:
            assert await iterator.__anext__() == b"first"
        await asyncio.sleep(0.05)
        await ch.close()
        with pytest.raises(MeshRpcError) as unary_failed:
            await asyncio.wait_for(unary, 5)
        with pytest.raises(MeshRpcError) as failed:
            await asyncio.wait_for(stream.read() if use == "read" else iterator.__anext__(), 5)
        assert failed.value.code() is grpc.StatusCode.CANCELLED
        assert await stream.code() is grpc.StatusCode.CANCELLED
        assert await stream.details() == failed.value.details()
        assert "channel was closed" in (await stream.details())
        assert stream.cancelled() and stream.done()
        # as the unary call in flight
        assert "channel was closed" in (unary_failed.value.details() or "")
        # a later read: the same error again
        if use == "read":
            with pytest.raises(MeshRpcError):
                await asyncio.wait_for(stream.read(), 5)
