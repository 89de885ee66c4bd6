"""``wait_for_connection()`` of a call cancelled before it was sent raises
``asyncio.CancelledError``, as grpc.aio's (``if self.done(): await
self._raise_for_status()``), side by side with a raw grpc.aio channel to the same server.
A meshkit call cancelled before its attempt opened (no attempt carries its outcome)
returned ``None``: the caller was told the call was connected when it was never sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import method
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
