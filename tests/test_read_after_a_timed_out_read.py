"""A stream whose ``read()`` was cancelled by its caller (an ``asyncio.wait_for`` timeout:
grpc.aio's ``_read`` then cancels the call) raises ``asyncio.CancelledError`` at the next
``read()``, as grpc.aio's, side by side with a raw grpc.aio channel to the
same server. meshkit's raised ``MeshRpcError`` ``CANCELLED`` "stream to 'echo' cancelled:
the channel was closed or its endpoint left": the application's own timeout blamed on the
channel or the server, while ``details()`` said "Locally cancelled by application!"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import SERVICE, handler, method, raw_server

RETRIED = {"retry": RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2))}
DIAL_KWS = [pytest.param({}, id="default"), pytest.param({"retry": None}, id="retry-None"),
            pytest.param(RETRIED, id="retried")]


async def _one_then_wait(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    await asyncio.sleep(30)


@contextlib.asynccontextmanager
async def _side_by_side(registry: LocalRegistry,
                        dial_kw: dict[str, Any]) -> AsyncIterator[tuple[Any, Any]]:
    slow = grpc.method_handlers_generic_handler(
        SERVICE, {"OneThenWait": grpc.unary_stream_rpc_method_handler(_one_then_wait)})
    async with raw_server(handler("e1"), slow) as (_server, port):
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


async def _outcome(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, 10)
    except asyncio.CancelledError:
        return "CancelledError"
    except Exception as exc:  # the outcome under test
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def _after_a_timed_out_read(ch: Any, kind: str) -> str:
    if kind == "bidi":
        call = ch.stream_stream(method("Bidi"))()
        await asyncio.wait_for(call.write(b"a"), 10)
    else:
        call = ch.unary_stream(method("OneThenWait"))(b"")
    await asyncio.wait_for(call.read(), 10)
    # the server sends nothing more for now: the read times out, grpc.aio cancels the call
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call.read(), 0.3)
    assert call.cancelled()
    return await _outcome(call.read())


@pytest.mark.parametrize("dial_kw", DIAL_KWS)
@pytest.mark.parametrize("kind", ["bidi", "server-stream"])
async def test_the_next_read_after_a_timed_out_read_raises_cancelled_error(
        registry: LocalRegistry, dial_kw: dict[str, Any], kind: str) -> None:
    async with _side_by_side(registry, dial_kw) as (raw, mesh):
        expected = await _after_a_timed_out_read(raw, kind)
        got = await _after_a_timed_out_read(mesh, kind)
    assert expected == "CancelledError"
    assert got == expected
