"""``wait_for_connection()`` of a call cancelled before it was sent raises
``asyncio.CancelledError``, as grpc.aio's (``if self.done(): await
self._raise_for_status()``), side by side with a raw grpc.aio channel to the same server.
A meshkit call cancelled before its attempt opened (no attempt carries its outcome)
returned ``None``: the caller was told the call was connected when it was never sent."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientInterceptor
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import handler, method, raw_server
from tests.test_grpc_parity import DIALS, side_by_side

RETRIED = {"retry": RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2))}


async def _outcome(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, 10)
    except asyncio.CancelledError:
        return "CancelledError"
    except TimeoutError:
        return "waits"
    return "connected"


async def _waits(ch: Any) -> dict[str, str]:
    # each call cancelled in the turn it is made in. Not the request-streaming kinds:
    # grpc.aio's (1.85) wait for ever there, or raise CancelledError, as the turns fall
    # (their _metadata_sent is then never set); meshkit's raise it, checked below
    makers = {
        "unary-unary": lambda: ch.unary_unary(method("Unary"))(b"x"),
        "unary-stream": lambda: ch.unary_stream(method("ServerStream"))(b"2"),
    }
    out = {}
    for kind, make in makers.items():
        call = make()
        assert call.cancel(), kind
        out[kind] = await _outcome(call.wait_for_connection())
    return out


@pytest.mark.parametrize("dial_kw", [*DIALS, pytest.param(RETRIED, id="retried")])
async def test_wait_for_connection_of_a_call_cancelled_before_it_was_sent(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        expected = await _waits(raw)
        got = await _waits(mesh)
        for kind, call in (("stream-unary", mesh.stream_unary(method("ClientStream"))()),
                           ("stream-stream", mesh.stream_stream(method("Bidi"))())):
            assert call.cancel()
            got[kind] = await _outcome(call.wait_for_connection())
    assert set(expected.values()) == {"CancelledError"}, expected
    assert got == {**expected, "stream-unary": "CancelledError",
                   "stream-stream": "CancelledError"}


class _NoToken(ClientInterceptor):
    """A credentials interceptor whose token file is missing: fails before any attempt."""

    async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/token")

    async def intercept_stream(self, details: Any, request: Any, proceed: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/token")


class _RawNoToken(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/token")


async def test_wait_for_connection_of_a_call_its_interceptor_failed_raises_that_error(
        registry: LocalRegistry) -> None:
    """A client interceptor's error before any attempt: grpc.aio's ``wait_for_connection``
    raises it (``InterceptedCall`` awaits its interceptors' task); meshkit's returned."""
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             interceptors=[_RawNoToken()]) as raw:
            call = raw.unary_unary(method("Unary"))(b"x")
            with pytest.raises(FileNotFoundError):
                await asyncio.wait_for(call.wait_for_connection(), 10)
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, interceptors=[_NoToken()])) as ch:
            await ch.wait_for_endpoints(1)
            calls = (ch.unary_unary(method("Unary"))(b"x"),
                     ch.unary_stream(method("ServerStream"))(b"1"),
                     ch.stream_unary(method("ClientStream"))(),
                     ch.stream_stream(method("Bidi"))())
            for call in calls:
                with pytest.raises(FileNotFoundError):
                    await asyncio.wait_for(call.wait_for_connection(), 10)
