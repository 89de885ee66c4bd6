"""Request streams that never started cannot lock a server's request streams out.

The request gate caps the request-streaming calls of ``async def`` handlers together with
the call slots (``max_concurrent_rpcs`` + 8 places). A client opening that many client- or
bidi-streaming calls that send their headers and never a message (nor get one) held every
place for as long as it kept its connection: each further request-streaming call of the
server, from any client, was shed ``RESOURCE_EXHAUSTED`` "server busy", for good (a plain
grpc.aio server caps nothing there; unary calls waiting for their request, and the
request streams of plain-function handlers, were already evicted at the cap once they had
waited ``evict_waiting_after_s``). Now a new request stream at the cap evicts the one that
has waited longest, at least ``evict_waiting_after_s``, without a first message either
way: it ends ``CANCELLED`` "request did not arrive in time", counted as ``evicted``. A
stream that has exchanged a message keeps its place (the cap still sheds new ones).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_SLOTS = 2
_PLACES = _SLOTS + 8  # the request streams' places: max_concurrent_rpcs + 8


async def _server(registry: LocalRegistry) -> meshkit.MeshServer:
    srv = meshkit.MeshServer(
        "echo", [add_echo("e1")], registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, drain_delay_s=0, grace_s=1.0, admin=None,
            limits=meshkit.ServerLimits(max_concurrent_rpcs=_SLOTS)))
    await srv.start()
    return srv


async def test_a_stream_that_never_started_is_evicted_for_a_new_one(
        registry: LocalRegistry) -> None:
    srv = await _server(registry)
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as idle_ch:
            idle = [idle_ch.stream_stream(method("Bidi"))() for _ in range(_PLACES)]
            await asyncio.wait_for(
                asyncio.gather(*(c.wait_for_connection() for c in idle)), 10)
            await until(lambda: gate.streams == _PLACES, timeout_s=10,
                        what="every place taken by a headers-only stream")
            await asyncio.sleep(1.5)  # past evict_waiting_after_s (1 s)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                upload = ch.stream_unary(method("ClientStream"))
                assert await upload(iter([b"a", b"b"]), timeout=10) == b"e1|a,b"
                bidi = ch.stream_stream(method("Bidi"))()
                await bidi.write(b"x")
                assert await asyncio.wait_for(bidi.read(), 10) == b"e1|x"
                await bidi.done_writing()
                assert await asyncio.wait_for(bidi.code(), 10) == grpc.StatusCode.OK
            # the upload evicted one idle stream; the bidi stream after it took the
            # place the upload gave back
            await until(lambda: any(c.done() for c in idle), timeout_s=10,
                        what="an idle stream evicted")
            ended = [c for c in idle if c.done()]
            assert [await c.code() for c in ended] == [grpc.StatusCode.CANCELLED]
            assert [await c.details() for c in ended] == ["request did not arrive in time"]
            for c in idle:
                c.cancel()
        await until(lambda: gate.streams == 0, timeout_s=10, what="every stream ended")
        assert (gate.evicted, gate.shed, gate.timed_out) == (1, 0, 0)
        assert srv.stats().gate_evicted == 1
    finally:
        await srv.drain()


async def test_a_stream_that_exchanged_a_message_keeps_its_place(
        registry: LocalRegistry) -> None:
    srv = await _server(registry)
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            open_ = [ch.stream_stream(method("Bidi"))() for _ in range(_PLACES)]
            for i, s in enumerate(open_):
                await s.write(b"%d" % i)
                assert await asyncio.wait_for(s.read(), 10) == b"e1|%d" % i
            await asyncio.sleep(1.5)  # past evict_waiting_after_s (1 s)
            shed = ch.stream_unary(method("ClientStream"))(iter([b"a"]))
            assert await asyncio.wait_for(shed.code(), 10) == \
                grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await shed.details() == "server busy"
            for s in open_:
                await s.done_writing()
            assert [await asyncio.wait_for(s.code(), 10) for s in open_] == \
                [grpc.StatusCode.OK] * _PLACES
        await until(lambda: gate.streams == 0, timeout_s=10, what="every stream ended")
        assert (gate.evicted, gate.shed) == (0, 1)
    finally:
        await srv.drain()
