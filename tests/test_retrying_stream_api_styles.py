"""A unary-stream call retried until its first message (``RetryingStreamCall``: a policy
``idempotent=True``) refuses mixing ``read()`` and ``async for`` as grpc.aio's streaming
call does (``grpc.aio.UsageError``, grpc's ``_update_response_style``), side by side with a
raw grpc.aio channel to the same server: it interleaved the two silently, so code written
against a channel with retries broke only when the policy changed."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import method
from tests.test_grpc_parity import side_by_side

RETRIED = {"retry": RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2))}


async def _outcome(coro: Any) -> str:
    try:
        return f"ok {await asyncio.wait_for(coro, 10)!r}"
    except grpc.aio.UsageError as exc:
        return f"UsageError {exc}"


async def _drain(call: Any) -> list[Any]:
    return [m async for m in call]


async def _styles(ch: Any) -> list[str]:
    out = []
    stream = ch.unary_stream(method("ServerStream"))(b"3")
    out.append(await _outcome(stream.read()))
    out.append(await _outcome(_drain(stream)))  # iterate after read
    stream.cancel()
    stream = ch.unary_stream(method("ServerStream"))(b"3")
    it = stream.__aiter__()
    out.append(await _outcome(it.__anext__()))
    out.append(await _outcome(stream.read()))  # read while iterating
    stream.cancel()
    # once the stream is done, read() gives EOF whatever style went before
    stream = ch.unary_stream(method("ServerStream"))(b"2")
    out.append(await _outcome(_drain(stream)))
    out.append(await _outcome(stream.read()))
    out.append(await _outcome(_drain(stream)))  # a second iteration: nothing more
    return out


async def test_mixing_read_and_iteration_on_a_retried_stream_raises_usage_error(
        registry: LocalRegistry) -> None:
    async with side_by_side(registry, RETRIED) as (raw, mesh):
        expected = await _styles(raw)
        got = await _styles(mesh)
    assert expected[1].startswith("UsageError"), expected
    assert expected[3].startswith("UsageError"), expected
    assert got == expected


@pytest.mark.parametrize("dial_kw", [pytest.param({}, id="default"),
                                     pytest.param(RETRIED, id="retried")])
async def test_a_stream_read_to_its_end_refuses_iteration(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """Reading to EOF, then ``async for``: grpc.aio's stream raises ``UsageError`` (the
    style was set by the reads, the call being done changes nothing for ``__aiter__``)."""
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        outs = []
        for ch in (raw, mesh):
            stream = ch.unary_stream(method("ServerStream"))(b"1")
            assert await stream.read() == b"e1|0"
            assert await stream.read() is grpc.aio.EOF
            outs.append(await _outcome(_drain(stream)))
    assert outs[0].startswith("UsageError"), outs
    assert outs[1] == outs[0]
