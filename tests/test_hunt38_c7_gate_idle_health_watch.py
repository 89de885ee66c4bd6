"""A health ``Watch`` that sends its headers and never its request is ended too.

The request gate ends a unary-request call whose request does not arrive within
``ServerLimits.first_message_timeout_s`` (``CANCELLED`` "request did not arrive in
time"), so headers-only calls cannot pile up. The health service's ``Watch`` bypasses the
gate (it takes no call slot: clients with client-side health checking keep one open per
channel), and grpc.aio read its request itself, with no bound: a client opening
headers-only ``Watch`` streams (100 a connection, any number of connections) kept each
one, its tasks and its stream, for as long as it kept the connection; nothing counted
them. A ``Watch`` now reads its request under the same timeout, still without a slot; one
that half-closes without a request is refused ``UNIMPLEMENTED`` as other unary-request
calls are. A real ``Watch`` is served as before.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_WATCH = "/grpc.health.v1.Health/Watch"


async def test_a_watch_without_its_request_is_ended(registry: LocalRegistry) -> None:
    srv = meshkit.MeshServer(
        "echo", [add_echo("e1")], registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, drain_delay_s=0, grace_s=1.0, admin=None,
            limits=meshkit.ServerLimits(first_message_timeout_s=0.5)))
    await srv.start()
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            idle = [ch.stream_stream(_WATCH)() for _ in range(20)]
            await asyncio.wait_for(
                asyncio.gather(*(c.wait_for_connection() for c in idle)), 10)
            codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in idle)), 15)
            assert codes == [grpc.StatusCode.CANCELLED] * 20
            assert {await c.details() for c in idle} == {"request did not arrive in time"}

            empty = ch.stream_stream(_WATCH)()
            await empty.done_writing()
            assert await asyncio.wait_for(empty.code(), 10) == grpc.StatusCode.UNIMPLEMENTED

            # a real Watch is answered, and stays open while it waits for changes
            watch = ch.unary_stream(
                _WATCH, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)(
                    health_pb2.HealthCheckRequest(service=""))
            first = await asyncio.wait_for(watch.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(1.0)  # past first_message_timeout_s
            assert not watch.done()
            watch.cancel()
        await until(lambda: gate.timed_out == 20, timeout_s=10, what="20 counted timed out")
        assert srv.stats().gate_timed_out == 20
    finally:
        await srv.drain()
