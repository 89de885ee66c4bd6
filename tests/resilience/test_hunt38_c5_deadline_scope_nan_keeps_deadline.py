"""A ``deadline_scope`` of NaN (a deadline computed wrong: ``start + budget`` with a NaN
budget) inside a handler adds no deadline of its own and keeps the caller's.

What was wrong: NaN read as "no deadline" and the scope set none, lifting the caller's
deadline, propagated, off every call the handler made in the block: the next hop got no
``grpc-timeout`` at all and could run for ever for a caller long gone (a call the
handler spawned as a task outlived it unbounded). ``clamp_timeout_s`` reads a NaN
timeout as a deadline passed for the same reason ("reading it as none would lift every
bound"). Now NaN leaves the deadline in force as it is (outside a handler or scope, that
is none, as before); ``deadline_scope(None)`` still lifts it on purpose.
"""

from __future__ import annotations

import math
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


def test_a_nan_scope_keeps_the_deadline_in_force() -> None:
    outer = time.monotonic() + 3.0
    with deadline_scope(outer):
        with deadline_scope(math.nan):
            assert current_deadline() == outer
        with deadline_scope(None):
            assert current_deadline() is None
    with deadline_scope(math.nan):
        assert current_deadline() is None


async def test_a_handlers_nan_scope_still_sends_the_callers_deadline(
        registry: LocalRegistry) -> None:
    seen: list[float | None] = []

    async def leaf(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.append(context.time_remaining())
        return b"ok"

    leaf_channel = meshkit.dial("leaf", registry=registry,
                                options=meshkit.DialOptions(insecure=True, retry=None))

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        with deadline_scope(time.monotonic() + math.nan):
            return await leaf_channel.unary_unary("/leaf/Call")(request)  # type: ignore[no-any-return]

    servers = [
        meshkit.MeshServer(name, [_service(name, fn)], registry=registry,
                           options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
        for name, fn in (("leaf", leaf), ("relay", relay))]
    for server in servers:
        await server.start()
    try:
        await leaf_channel.wait_for_endpoints(1, timeout_s=10)
        async with meshkit.dial("relay", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert await ch.unary_unary("/relay/Call")(b"x", timeout=5.0) == b"ok"
        assert len(seen) == 1 and seen[0] is not None and 0 < seen[0] <= 5.0, seen
    finally:
        await leaf_channel.close()
        for server in servers:
            await server.drain()
