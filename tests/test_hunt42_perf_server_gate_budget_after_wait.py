"""A unary call that waited for a read permit while the in-flight request bytes filled up
is shed before its request is read.

The request gate checks ``max_inflight_request_bytes`` as a call arrives and, for a
call that had to wait for one of the ``max_concurrent_reads`` permits, again once it
has the permit: others' requests may have been admitted meanwhile, and the point of
the budget is not to take in (grpc core holds a pending read's whole message) a
request that would then be refused. A call that took a free permit at once is not
checked twice (nothing ran between the two checks). This pins the second check: the
waiting call's request is never read (its deserializer never runs) and it is answered
``RESOURCE_EXHAUSTED`` "server busy".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.server import ServerLimits

_PATH = "/hunt42.Gate/Hold"


async def _until(what: Any, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_a_call_that_waited_for_a_permit_is_shed_unread_when_the_bytes_filled_up(
    registry: LocalRegistry,
) -> None:
    decoded: list[int] = []
    release = asyncio.Event()

    def deserialize(data: bytes) -> bytes:
        decoded.append(len(data))
        return data

    async def hold(request: bytes, context: Any) -> bytes:
        await release.wait()
        return b"held %d" % len(request)

    def add(_servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "hunt42.Gate", {"Hold": grpc.unary_unary_rpc_method_handler(
                hold, request_deserializer=deserialize)}),))

    srv = meshkit.MeshServer("gatebudget", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 limits=ServerLimits(max_concurrent_rpcs=8,
                                                     max_concurrent_reads=1,
                                                     max_inflight_request_bytes=1000,
                                                     evict_waiting_after_s=None,
                                                     first_message_timeout_s=20.0)))
    await srv.start()
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            # the first call holds the only read permit, its request not sent yet
            first = ch.stream_stream(_PATH)(timeout=20)
            await asyncio.wait_for(first.wait_for_connection(), 10)
            await _until(lambda: gate.inflight_bytes == 0 and len(gate._readers) == 1)
            # the second waits for the permit
            second = ch.unary_unary(_PATH)(b"b" * 10, timeout=20)
            waiting = asyncio.ensure_future(second.code())
            await _until(lambda: len(gate._read_waiters) == 1)
            # the first request arrives (2000 bytes: alone, admitted over the budget)
            await first.write(b"a" * 2000)
            await first.done_writing()
            code = await asyncio.wait_for(waiting, 10)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await second.details() == "server busy"
            assert decoded == [2000]  # the second request was never read
            assert gate.shed == 1
            release.set()
            assert [m async for m in first] == [b"held 2000"]
            assert await first.code() == grpc.StatusCode.OK
        assert gate.inflight_bytes == 0
    finally:
        release.set()
        await srv.drain()
