"""A deadline propagated down a chain of meshkit servers never grows from hop to hop.

What was wrong: grpc core sends ``grpc-timeout`` rounded up to three digits of its unit
(10 ms from 1 s, 100 ms from 10 s, 1 s from 100 s: up to 1 %), and reads its clock in
whole milliseconds, so a timeout of 30 s left the client as ``301`` hundreds of
milliseconds. A mesh channel passed each hop's remaining time on as it was, so every hop
rounded it up again: with a 30 s deadline the fifth hop of a chain believed it had 0.4 s
more than the first caller gave, with 300 s, 4 s more (grpc-go encodes to the
microsecond, its deadline shrinking by the time each hop took). The next hop admitted,
propagated and planned work (``min_remaining_s``, retries' and hedges' deadline checks,
a database statement timeout from ``current_deadline()``) on time the caller never gave,
and was then cancelled by the hop above with time left (counted ``CANCELLED``, not a
deadline run out). A channel now hands grpc a propagated call's timeout lowered to the
grid grpc core encodes on (less 5 ms for its clock's rounding), so the next hop's
deadline is never later than this one's; the call's own timer fires that much early (at
most 1 % + 5 ms), and its ``DEADLINE_EXCEEDED`` is still this call's deadline,
propagated, run out: a handler that lets it escape answers ``DEADLINE_EXCEEDED``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import current_deadline
from meshkit.resilience._deadline import WIRE_CLOCK_S, wire_timeout_s

pytestmark = pytest.mark.timeout(90)

HOPS = 4


def _service(name: str, behaviour: Any) -> tuple[Any, None]:
    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            name, {"Call": grpc.unary_unary_rpc_method_handler(behaviour)}),))

    return add, None


async def _chain(registry: LocalRegistry, seen: dict[str, list[float]], last: Any,
                 first_margin_s: float = 0.0) -> tuple[list[meshkit.MeshServer], list[Any]]:
    """Servers hop1 .. hop<HOPS>, each but the last relaying to the next over a mesh
    channel (no timeout of its own: the propagated deadline; hop1's channel with
    ``deadline_margin_s=first_margin_s``); each notes the deadline it runs under; the
    last runs ``last``."""
    channels = [meshkit.dial(f"hop{n + 1}", registry=registry, options=meshkit.DialOptions(
        insecure=True, retry=None, deadline_margin_s=first_margin_s if n == 1 else 0.0))
        for n in range(1, HOPS)]
    servers: list[meshkit.MeshServer] = []

    def relay(n: int) -> Any:
        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            seen.setdefault(f"hop{n}", []).append(current_deadline() or 0.0)
            if n == HOPS:
                return await last(request, context)  # type: ignore[no-any-return]
            call: Any = channels[n - 1].unary_unary(f"/hop{n + 1}/Call")
            return await call(request)  # type: ignore[no-any-return]
        return behaviour

    for n in range(HOPS, 0, -1):
        srv = meshkit.MeshServer(f"hop{n}", [_service(f"hop{n}", relay(n))], registry=registry,
                                 options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                              grace_s=0.5))
        await srv.start()
        servers.append(srv)
    for ch in channels:
        await ch.wait_for_endpoints(1, timeout_s=10)
    return servers, channels


@pytest.mark.parametrize("timeout_s", [2.0, 12.345, 30.0, 300.0])
async def test_each_hops_deadline_is_no_later_than_the_one_above(
        registry: LocalRegistry, timeout_s: float) -> None:
    seen: dict[str, list[float]] = {}

    async def ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"ok"

    servers, channels = await _chain(registry, seen, ok)
    try:
        async with meshkit.dial("hop1", registry=registry, options=meshkit.DialOptions(
                insecure=True, retry=None)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert await ch.unary_unary("/hop1/Call")(b"", timeout=timeout_s) == b"ok"
        deadlines = [seen[f"hop{n}"][0] for n in range(1, HOPS + 1)]
        # hop 1 gets what the caller's grpc sent (rounded up: not the mesh's doing);
        # from there on no hop may run under a later deadline than the hop above it
        # (grpc core reads the time left in whole milliseconds: 1 ms each way)
        later = [round(b - a, 4) for a, b in itertools.pairwise(deadlines)]
        assert all(d <= 0.002 for d in later), later
    finally:
        for channel in channels:
            await channel.close()
        for srv in servers:
            await srv.drain()


def test_the_timeout_handed_to_grpc_is_on_grpc_cores_grid() -> None:
    for timeout_s, unit in ((0.5, 0.001), (2.0, 0.01), (2.005, 0.01), (12.345, 0.1),
                            (30.0, 0.1), (300.0, 1.0), (3000.5, 10.0), (86_400.0, 100.0)):
        lowered = wire_timeout_s(timeout_s)
        assert timeout_s - unit - WIRE_CLOCK_S - 1e-6 <= lowered <= timeout_s - WIRE_CLOCK_S \
            + 1e-6, (timeout_s, lowered)
        on_grid = lowered + WIRE_CLOCK_S
        assert abs(on_grid / unit - round(on_grid / unit)) < 1e-6, (timeout_s, lowered)
    assert wire_timeout_s(0.004) == 0.004  # too short to lower: as it is


async def test_a_propagated_call_run_out_early_is_still_the_callers_deadline(
        registry: LocalRegistry) -> None:
    """With about 10.09 s left (hop1 keeps a 0.5 s margin, so the caller's own timer is
    not the first to fire), a hop's call below runs under a timeout lowered to 10.0 s less
    5 ms: its own timer fires about 0.09 s before the deadline it was given, more than the
    0.05 s the server allows a deadline run out. Each handler lets that escape: answered
    ``DEADLINE_EXCEEDED`` "in a call the handler made under it" up the chain, not
    ``UNKNOWN``."""
    seen: dict[str, list[float]] = {}

    async def never(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await asyncio.sleep(60)
        return b"late"

    servers, channels = await _chain(registry, seen, never, first_margin_s=0.5)
    try:
        async with meshkit.dial("hop1", registry=registry, options=meshkit.DialOptions(
                insecure=True, retry=None)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/hop1/Call")(b"", timeout=10.59)
            took = time.monotonic() - t0
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "deadline exceeded (in a call the handler made under it)"), took
        assert took < 10.59 + 1.0
    finally:
        for channel in channels:
            await channel.close()
        for srv in servers:
            await srv.drain()
