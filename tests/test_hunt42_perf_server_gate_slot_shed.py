"""A unary-request call shed for want of a call slot leaves the request gate's slot count
as it found it, and is answered and counted as before.

The request gate takes a unary-request call's slot in the step that reads its request
(``RequestGate._first``, one frame fewer per call than a separate step before it): a
call that finds every slot taken is shed ``RESOURCE_EXHAUSTED`` "server busy" with the
nack trailer, counted in ``shed``; the slot it takes as the abort is raised is given
back by the wrap's release of a call that never got in. This pins that accounting on
the three wraps that run the step (the telemetry wrap the gate is fused into, the
gate's own ``unary_out`` without telemetry, and ``stream_out`` for a unary-stream
method), and the health ``Check``'s reserve, which falls back to any call's slot.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.server import ServerLimits

_SVC = "hunt42.Slots"
_SHED = 3


async def _until(what: Any, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def _server(registry: LocalRegistry, telemetry: bool, release: asyncio.Event,
            cap: int = 1) -> meshkit.MeshServer:
    async def hold(request: bytes, context: Any) -> bytes:
        await release.wait()
        return b"held " + request

    async def hold_down(request: bytes, context: Any) -> Any:
        await release.wait()
        yield b"down " + request

    def add(_servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, {
            "Hold": grpc.unary_unary_rpc_method_handler(hold),
            "HoldDown": grpc.unary_stream_rpc_method_handler(hold_down),
        }),))

    extra: dict[str, Any] = {} if telemetry else {"telemetry": None}
    return meshkit.MeshServer("gateslots", [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0, admin=None,
                                  limits=ServerLimits(max_concurrent_rpcs=cap,
                                                      evict_waiting_after_s=None),
                                  **extra))


async def _call(ch: grpc.aio.Channel, method: str, tag: bytes) -> Any:
    if method == "Hold":
        return await ch.unary_unary(f"/{_SVC}/Hold")(tag, timeout=10)
    return [m async for m in ch.unary_stream(f"/{_SVC}/HoldDown")(tag, timeout=10)]


def _answer(method: str, tag: bytes) -> Any:
    return b"held " + tag if method == "Hold" else [b"down " + tag]


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry", "no-telemetry"])
@pytest.mark.parametrize("method", ["Hold", "HoldDown"])
async def test_a_call_shed_for_a_slot_gives_back_what_it_took(
    registry: LocalRegistry, method: str, telemetry: bool
) -> None:
    release = asyncio.Event()
    srv = _server(registry, telemetry, release)
    await srv.start()
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            held = asyncio.ensure_future(_call(ch, method, b"a"))
            await _until(lambda: gate.calls() == 1 and gate.active == 1)
            for i in range(_SHED):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _call(ch, method, b"%d" % i)
                assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert info.value.details() == "server busy"
                assert ("meshkit-nack", "1") in tuple(info.value.trailing_metadata() or ())
                # the one call holding its slot, nothing else
                assert (gate.calls(), gate.active) == (1, 1)
            assert gate.shed == _SHED
            release.set()
            assert await asyncio.wait_for(held, 10) == _answer(method, b"a")
            await _until(lambda: gate.calls() == 0)
            # the slot is free again: a call gets it, then gives it back
            assert await _call(ch, method, b"b") == _answer(method, b"b")
            await _until(lambda: gate.calls() == 0)
        assert (gate.calls(), gate.active, gate.inflight_bytes, gate.shed) == (0, 0, 0, _SHED)
    finally:
        release.set()
        await srv.drain()


async def test_a_health_check_past_the_reserve_is_shed_as_any_call(
    registry: LocalRegistry,
) -> None:
    """With the one slot and the 8 reserved places held (checks sending headers only,
    never evicted without ``evict_waiting_after_s``), a ninth check is any call: shed
    "server busy"; the slot count is what it was, and back to 0 at the end."""
    release = asyncio.Event()
    srv = _server(registry, True, release)
    await srv.start()
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            held = asyncio.ensure_future(_call(ch, "Hold", b"a"))
            await _until(lambda: gate.calls() == 1)
            path = "/grpc.health.v1.Health/Check"
            idle = [ch.stream_stream(path)(timeout=10) for _ in range(8)]
            await _until(lambda: gate.calls() == 9)
            check = health_pb2_grpc.HealthStub(ch).Check
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == "server busy"
            assert gate.calls() == 9
            for c in idle:
                c.cancel()
            await _until(lambda: gate.calls() == 1)
            answer = await check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            release.set()
            assert await asyncio.wait_for(held, 10) == b"held a"
            await _until(lambda: gate.calls() == 0)
        assert (gate.calls(), gate.active, gate.inflight_bytes) == (0, 0, 0)
    finally:
        release.set()
        await srv.drain()
