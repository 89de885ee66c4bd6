"""A health ``Watch`` request is bounded as a reserved health ``Check``'s is (4 KiB).

The ``Watch`` takes no call slot and bypasses the request gate (a client with client-side
health checking keeps one open per channel), so its request was read whatever its size
(up to ``max_receive_message_bytes``, 4 MiB) and held for the stream's whole life (the
servicer keys its watchers by the service name): each stream a caller opened and left
open held up to 4 MiB outside ``max_inflight_request_bytes``, 100 streams per connection,
however many connections. A ``Watch`` whose request is over 4 KiB (a service name no
real service has) is now refused ``RESOURCE_EXHAUSTED`` before the servicer sees it, as
a reserved ``Check`` over it is; a service name of ordinary length is watched as
before."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo


@pytest.mark.timeout(60)
async def test_a_watch_of_a_huge_service_name_is_refused(registry: LocalRegistry) -> None:
    srv = meshkit.MeshServer(
        "watchd", [add_echo("w1")], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="w1", drain_delay_s=0.0,
                                     grace_s=2.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            huge = stub.Watch(health_pb2.HealthCheckRequest(service="s" * (1 << 20)),
                              timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(huge.read(), 10)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "s" * 64 not in (err.value.details() or "")  # the name is not echoed
            # nothing kept for it (the server's own watches of "" and its name, which
            # its registration follows, are there: ServeOptions.follow_health)
            assert set(srv.health._server_watchers) <= {"", "watchd"}
            name = "pkg.v1." + "S" * 200
            fine = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=10)
            first = await asyncio.wait_for(fine.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            fine.cancel()
    finally:
        await srv.drain()
