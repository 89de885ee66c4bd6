"""Client-side parity of a meshkit channel with raw grpc.aio, side by side against the same
real grpc.aio server on loopback (a plain grpc.aio echo server registered in the local
registry, so both channels reach the very same process): what grpc.aio answers, meshkit
answers, with default dial options and without retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, method, raw_server

# default dial options, and without retries (the wrappers they add must change nothing here)
DIALS = [pytest.param({}, id="default"), pytest.param({"retry": None}, id="retry-None")]


@contextlib.asynccontextmanager
async def side_by_side(registry: LocalRegistry,
                       dial_kw: dict[str, Any]) -> AsyncIterator[tuple[Any, Any]]:
    """``(raw grpc.aio channel, meshkit channel)`` to one plain grpc.aio echo server."""
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        raw = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        mesh = meshkit.dial("echo", registry=registry,
                            options=meshkit.DialOptions(insecure=True, **dial_kw))
        try:
            await mesh.wait_for_endpoints(1)
            yield raw, mesh
        finally:
            await raw.close()
            await mesh.close()


async def _await(call: Any) -> Any:
    return await call


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_debug_error_string(registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """grpc.aio's call objects have ``async debug_error_string()`` (grpc core's debug string
    of the status); meshkit's had none (``AttributeError``): the unary and the streaming
    call give the settled attempt's."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            unary = ch.unary_unary(method("Fail"))(b"NOT_FOUND")
            with pytest.raises(grpc.aio.AioRpcError):
                await unary
            assert "NOT_FOUND" in (await unary.debug_error_string() or ""), ch
            stream = ch.unary_stream(method("FailStream"))(b"NOT_FOUND:1")
            with pytest.raises(grpc.aio.AioRpcError):
                _ = [m async for m in stream]
            assert "NOT_FOUND" in (await stream.debug_error_string() or ""), ch
            ok = ch.unary_unary(method("Unary"))(b"x")
            await ok
            assert isinstance(await ok.debug_error_string(), str), ch


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_details_of_a_cancelled_unary_call(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """A unary call cancelled in flight: grpc.aio's ``details()`` is "Locally cancelled by
    application!" (as a meshkit stream's); a meshkit unary call answered ``""``."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            call = ch.unary_unary(method("Sleep"))(b"5000", timeout=10)
            task = asyncio.ensure_future(_await(call))
            await asyncio.sleep(0.2)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await call.code() is grpc.StatusCode.CANCELLED, ch
            assert await call.details() == "Locally cancelled by application!", ch
