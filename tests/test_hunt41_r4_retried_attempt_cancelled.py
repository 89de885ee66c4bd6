"""Review r4 of d109bf2d: a retried server stream (``RetryingStreamCall``) whose failed
attempt's grpc.aio call goes on -- an attempt interceptor's response iterator raising
``UNAVAILABLE`` at the first response (a stale-replica check; grpc.aio's intercepted call
then reports ``done()`` false) -- retried without ending that attempt: its server kept
streaming to nobody until the call's deadline. Measured: the first attempt's handler
neither cancelled nor ended 1 s after the retry's first message (a 3 s backoff, the
handler then sleeping 20 s). grpc's own retries end an attempt they retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import raw_server
from tests.support.wait import until
from tests.test_hunt41_r2b_retried_stream_headers_commit import _options, _RefuseFirst

pytestmark = pytest.mark.timeout(60)


async def test_a_retried_attempt_going_on_is_cancelled(registry: LocalRegistry) -> None:
    """The refused first attempt's server handler is cancelled by the retry (within
    10 s), while the second attempt's stream reads on."""
    ended: list[str] = []

    async def numbered(request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.sleep(20)
            ended.append("slept")
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    handler = grpc.method_handlers_generic_handler(
        "t.S", {"Numbered": grpc.unary_stream_rpc_method_handler(numbered)}
    )
    refuse = _RefuseFirst()
    async with raw_server(handler) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1", port=port))
        async with meshkit.dial(
            "s", registry=registry, options=_options(refuse, pause_s=0.5)
        ) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call = ch.unary_stream("/t.S/Numbered")(b"", timeout=30)
            await asyncio.wait_for(call.wait_for_connection(), 10)
            await asyncio.wait_for(refuse.refused.wait(), 10)
            assert await asyncio.wait_for(call.read(), 10) == b"first"  # the retry's
            assert refuse.attempts == 2
            await until(lambda: bool(ended), timeout_s=10.0, what="the first attempt ended")
            assert ended == ["cancelled"]  # the first one; the second still streams
            assert not call.done()
            call.cancel()
