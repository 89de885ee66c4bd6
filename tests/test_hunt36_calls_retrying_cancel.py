"""A unary-stream call retried until its first message (``RetryingStreamCall``, a policy
``idempotent=True``) reads that first message ahead, in its commit task. Cancelled once
committed, its ``read()`` and ``async for`` handed out that buffered message before raising
``CancelledError``, where grpc.aio's cancelled call raises at once (its ``read`` checks
``done()`` first): side by side with a raw grpc.aio channel to the same server."""

from __future__ import annotations

import asyncio
from typing import Any

from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import method
from tests.support.wait import until
from tests.test_grpc_parity import side_by_side

RETRIED = {"retry": RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2))}


async def _outcome(coro: Any) -> str:
    try:
        return f"ok {await asyncio.wait_for(coro, 10)!r}"
    except asyncio.CancelledError:
        return "CancelledError"


async def _drain(call: Any) -> list[Any]:
    return [m async for m in call]


async def _cancelled_then(ch: Any, use: Any) -> list[str]:
    call = ch.unary_stream(method("ServerStream"))(b"3")
    await call.wait_for_connection()
    if hasattr(call, "_details"):  # the mesh's: wait for its commit to read ahead
        await until(lambda: call._call is not None and call._call._is_settled,
                    what="the retried stream committed")
    else:
        await asyncio.sleep(0.05)
    assert call.cancel() is True
    return [await _outcome(use(call)), await _outcome(call.code())]


async def test_a_committed_retried_stream_cancelled_reads_nothing_more(
        registry: LocalRegistry) -> None:
    async with side_by_side(registry, RETRIED) as (raw, mesh):
        for use in (lambda c: c.read(), _drain):
            expected = await _cancelled_then(raw, use)
            got = await _cancelled_then(mesh, use)
            assert expected[0] == "CancelledError", expected
            assert got == expected
