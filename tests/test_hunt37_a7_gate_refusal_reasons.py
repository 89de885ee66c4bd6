"""Each call the request gate ends is counted under one refusal reason.

What a user saw: a call evicted from its slot or read permit for a newer one (after
``evict_waiting_after_s``, 1 s) was counted twice: in ``evicted`` and again in
``timed_out`` (when it was reading: ``CANCELLED``) or ``shed`` (when it was waiting for
a read permit: ``RESOURCE_EXHAUSTED``). ``meshkit_server_gate_refusals_total``, whose
help text lists the reasons as alternatives, summed to more refusals than calls, and
``ServerStats.gate_timed_out`` ("request did not arrive within first_message_timeout_s")
rose under load with calls ended after one second, sending operators after slow
clients. Now an evicted call counts in ``evicted`` only; ``timed_out`` and ``shed``
count the others.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, generate_latest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import MeshCollector
from meshkit.server import ServerLimits


def _add_hold(_servicer: object, server: Any) -> None:
    async def hold(request: bytes, context: object) -> bytes:
        return b"held %d" % len(request)

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Gate", {"Hold": grpc.unary_unary_rpc_method_handler(hold)}),))


def _refusals(service: str) -> dict[str, float]:
    reg = CollectorRegistry()
    reg.register(MeshCollector())
    out: dict[str, float] = {}
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith("meshkit_server_gate_refusals_total{") and \
                f'service="{service}"' in line:
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


async def test_an_evicted_call_is_counted_evicted_only(registry: LocalRegistry) -> None:
    """Two header-only calls fill both slots; a call after evict_waiting_after_s takes
    the slot of one (ended CANCELLED, counted evicted), the other ends at
    first_message_timeout_s (counted timed_out): two refusals, one per reason."""
    srv = meshkit.MeshServer("gatereasons", [(_add_hold, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 limits=ServerLimits(max_concurrent_rpcs=2,
                                                     evict_waiting_after_s=0.5,
                                                     first_message_timeout_s=4.0)))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            idle = [ch.stream_stream("/test.Gate/Hold")() for _ in range(2)]
            await asyncio.wait_for(
                asyncio.gather(*(c.wait_for_connection() for c in idle)), 10)
            await asyncio.sleep(1.0)  # both have waited past evict_waiting_after_s
            assert await ch.unary_unary("/test.Gate/Hold")(b"x", timeout=10) == b"held 1"
            codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in idle)), 15)
            assert codes == [grpc.StatusCode.CANCELLED] * 2
        gate = srv.gate
        assert gate is not None
        assert (gate.evicted, gate.timed_out, gate.shed) == (1, 1, 0)
        stats = srv.stats()
        assert (stats.gate_evicted, stats.gate_timed_out, stats.gate_shed) == (1, 1, 0)
        refusals = _refusals("gatereasons")
        assert refusals.get("evicted") == 1 and refusals.get("timed_out") == 1, refusals
        assert sum(refusals.values()) == 2, refusals  # as many as calls refused
    finally:
        await srv.drain()


async def test_a_call_evicted_while_waiting_for_a_read_permit_is_counted_evicted_only(
    registry: LocalRegistry,
) -> None:
    """With one read permit, held by a header-only call, a second header-only call waits
    for it; a call after evict_waiting_after_s evicts the oldest waiting call, and the
    permit holder is ended for the waiters: each ended call is counted once."""
    srv = meshkit.MeshServer("gatepermit", [(_add_hold, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 limits=ServerLimits(max_concurrent_rpcs=2,
                                                     max_concurrent_reads=1,
                                                     evict_waiting_after_s=0.5,
                                                     first_message_timeout_s=4.0)))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            idle = [ch.stream_stream("/test.Gate/Hold")() for _ in range(2)]
            await asyncio.wait_for(
                asyncio.gather(*(c.wait_for_connection() for c in idle)), 10)
            await asyncio.sleep(1.0)
            assert await ch.unary_unary("/test.Gate/Hold")(b"x", timeout=10) == b"held 1"
            codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in idle)), 15)
            assert set(codes) <= {grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        gate = srv.gate
        assert gate is not None
        # two calls refused (the two header-only ones), each under one reason
        assert gate.evicted + gate.timed_out + gate.shed == 2, (
            gate.evicted, gate.timed_out, gate.shed)
        assert gate.evicted >= 1
        assert sum(_refusals("gatepermit").values()) == 2
    finally:
        await srv.drain()
