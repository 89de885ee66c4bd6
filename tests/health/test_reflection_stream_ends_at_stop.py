"""An idle server reflection stream ends at the drain's stop instead of holding it.

A reflection client keeps its ``ServerReflectionInfo`` stream open between requests
(grpcreflect's client, and so grpcui, for its whole session; Postman), and the stream
never ends by itself: ``server.stop(grace_s)`` waited the whole ``grace_s`` for it at
every drain, however idle the server, then cut it ``UNAVAILABLE`` (as it did for health
``Watch`` streams). Now, as the stop begins (with the ``Watch`` streams), a reflection
stream waiting for its next request ends ``OK``; a request it has begun to answer is
answered first."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo


def _open(ch: grpc.aio.Channel, version: str) -> grpc.aio.StreamStreamCall:
    return ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)()


@pytest.mark.timeout(60)
async def test_an_idle_reflection_stream_does_not_hold_the_drain(
        registry: LocalRegistry) -> None:
    srv = meshkit.MeshServer(
        "reflectd", [add_echo("r1")], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="r1", drain_delay_s=0.0,
                                     grace_s=8.0, admin=None))
    await srv.start()
    drained = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            calls = [_open(ch, "v1"), _open(ch, "v1alpha")]
            for call in calls:  # each answers, then waits for the next request
                await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                answer = await asyncio.wait_for(call.read(), 10)
                assert "meshkit.test.Echo" in [
                    s.name for s in answer.list_services_response.service]
            began = time.monotonic()
            await asyncio.wait_for(srv.drain(), 20)
            drained = True
            took = time.monotonic() - began
            assert took < 6, took  # not the whole grace_s
            for call in calls:
                assert await call.read() is grpc.aio.EOF
                assert await call.code() is grpc.StatusCode.OK
    finally:
        if not drained:
            await srv.drain()
