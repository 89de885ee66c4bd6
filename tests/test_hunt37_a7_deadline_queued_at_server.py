"""A deadline spent waiting in the server's own request gate is not the caller's.

What a user saw: with ``DeadlineOptions(min_remaining_s=...)``, a call that came with
plenty of time but waited in the request gate for a read permit (behind uploads whose
request did not come) until less than ``min_remaining_s`` was left was refused with the
admission refusal: details "deadline exceeded before the handler ran" and the trailer
``meshkit-deadline-refused: 1``, which tells mesh clients the request's deadline was
short and says nothing about the endpoint, so they counted it against no endpoint
(outlier ejection, P2C latency) and kept sending to the slow server. Now such a call is
refused ``DEADLINE_EXCEEDED`` "deadline exceeded while the call waited at the server",
without the trailer: the endpoint's own delay, counted as its outcome. A call that comes
with too little time still gets the admission refusal.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import DeadlineOptions
from meshkit.resilience._deadline import (
    ADMISSION_REFUSAL_DETAILS,
    ADMISSION_REFUSAL_METADATA,
    admission_refusal,
)
from meshkit.server import ServerLimits
from tests.support.wait import until


def _add_echo(_servicer: object, server: Any) -> None:
    async def echo(request: bytes, context: object) -> bytes:
        return request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Queue", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))


async def test_a_call_whose_time_went_in_the_servers_queue_is_not_an_admission_refusal(
    registry: LocalRegistry,
) -> None:
    """The only read permit held by a header-only call (evicted after 1.5 s), a call
    with a 2.5 s deadline waits for it and has less than min_remaining_s (1.5 s) left
    when admitted: DEADLINE_EXCEEDED without the admission trailer; one that comes with
    1 s is refused as before, with it."""
    srv = meshkit.MeshServer("queue", [(_add_echo, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 deadline=DeadlineOptions(min_remaining_s=1.5),
                                 limits=ServerLimits(max_concurrent_reads=1,
                                                     evict_waiting_after_s=1.5,
                                                     first_message_timeout_s=20.0)))
    await srv.start()
    gate = srv.gate
    assert gate is not None
    idle: Any = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            echo = ch.unary_unary("/test.Queue/Echo")
            # the refusal of a call that comes with too little time is unchanged
            try:
                await echo(b"x", timeout=1.0)
                raise AssertionError("admitted")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                assert exc.details() == ADMISSION_REFUSAL_DETAILS
                assert admission_refusal(exc.details(), exc.trailing_metadata())
            idle = ch.stream_stream("/test.Queue/Echo")()
            await until(lambda: len(gate._readers) == 1, timeout_s=10,
                        what="the header-only call holding the read permit")
            try:
                await echo(b"x", timeout=2.5)
                raise AssertionError("admitted")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                assert exc.details() == "deadline exceeded while the call waited at the server"
                trailers = tuple(tuple(m) for m in exc.trailing_metadata() or ())
                assert ADMISSION_REFUSAL_METADATA not in trailers, trailers
                assert not admission_refusal(exc.details(), exc.trailing_metadata())
            assert await asyncio.wait_for(idle.code(), 10) is grpc.StatusCode.CANCELLED
    finally:
        if idle is not None:
            idle.cancel()
        await srv.drain()
