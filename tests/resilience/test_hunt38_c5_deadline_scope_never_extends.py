"""A ``deadline_scope`` inside a handler (or another scope) never extends the deadline in
force: the block runs under the earlier of the two, as grpc-go's ``context.WithDeadline``
of a context whose deadline is already earlier.

What was wrong: ``deadline_scope(d)`` set ``d`` whatever deadline was in force, so a
handler that bounded a downstream call with ``with deadline_scope(time.monotonic() +
5.0):`` while its own caller had 0.5 s left sent that call ``grpc-timeout`` 5 s: the next
hop saw 5 s left (its admission, ``min_remaining_s``, and its own outgoing calls took it),
work the caller had long given up on; the call was only ended by the handler's
cancellation, so the next hop read it as ``CANCELLED`` with time left, not as a deadline
that ran out. ``deadline_scope(None)`` still lifts the deadline (work meant to outlive
the call).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import current_deadline, deadline_scope

pytestmark = pytest.mark.timeout(30)


def _service(name: str, behaviour: Any) -> tuple[Any, None]:
    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            name, {"Call": grpc.unary_unary_rpc_method_handler(behaviour)}),))

    return add, None


def test_a_later_nested_scope_keeps_the_earlier_deadline() -> None:
    outer_deadline = time.monotonic() + 1.0
    with deadline_scope(outer_deadline):
        with deadline_scope(time.monotonic() + 50.0):
            assert current_deadline() == outer_deadline
        shorter = time.monotonic() + 0.5
        with deadline_scope(shorter):
            assert current_deadline() == shorter
        with deadline_scope(float("inf")):
            assert current_deadline() == outer_deadline
        with deadline_scope(None):  # lifted on purpose: work meant to outlive the call
            assert current_deadline() is None
            far = time.monotonic() + 50.0
            with deadline_scope(far):
                assert current_deadline() == far
        assert current_deadline() == outer_deadline
    assert current_deadline() is None


async def test_a_handlers_longer_scope_does_not_extend_its_callers_deadline(
        registry: LocalRegistry) -> None:
    seen: dict[str, float | None] = {}
    leaf_done = asyncio.Event()

    async def leaf(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen["leaf_remaining"] = context.time_remaining()
        try:
            await asyncio.sleep(10)
        finally:
            leaf_done.set()
        return b"late"

    leaf_channel = meshkit.dial("leaf", registry=registry,
                                options=meshkit.DialOptions(insecure=True, retry=None))

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # "give this downstream call at most 5 s": the caller's 0.5 s is shorter
        with deadline_scope(time.monotonic() + 5.0):
            seen["scope"] = current_deadline()
            return await leaf_channel.unary_unary("/leaf/Call")(request)

    servers = [
        meshkit.MeshServer(name, [_service(name, fn)], registry=registry,
                           options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
        for name, fn in (("leaf", leaf), ("relay", relay))]
    for server in servers:
        await server.start()
    try:
        async with meshkit.dial("relay", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await asyncio.wait_for(leaf_channel.wait_for_endpoints(1), 10)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/relay/Call")(b"x", timeout=0.5)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(leaf_done.wait(), 10)
        scope = seen["scope"]
        assert scope is not None and scope - t0 <= 0.6, scope - t0 if scope else None
        remaining = seen["leaf_remaining"]
        # grpc-timeout on the wire rounds up a little; 5 s is what the scope asked for
        assert remaining is not None and remaining <= 0.6, remaining
    finally:
        await leaf_channel.close()
        for server in servers:
            await server.drain()
