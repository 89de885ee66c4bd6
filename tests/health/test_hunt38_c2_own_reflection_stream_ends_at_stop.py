"""An idle server reflection stream of *your own* reflection servicer ends at the drain's
stop too, as one of meshkit's does.

``ServeOptions.reflection``: "A reflection servicer among the servicers given (either
version) is served instead" (say, over a descriptor pool of your own); the README says the
stop ends "the server reflection streams a client keeps open between requests (grpcui;
ended ``OK`` once the request under way is answered)". Only meshkit's own servicer's
streams were ended: a grpcui session on a server given its own
``grpc_reflection.v1alpha.reflection.aio.ReflectionServicer`` held every drain for the
whole ``grace_s``, then was cut ``UNAVAILABLE`` (the health ``Watch`` of your own health
servicer was already ended). Both the registered-method path (generated
``add_*_to_server`` of grpcio-tools 1.62+) and a generic handler (older generated code)
are checked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo

_SERVICE = "grpc.reflection.v1alpha.ServerReflection"


def _generic_only(servicer: Any, server: Any) -> None:
    """``add_ServerReflectionServicer_to_server`` as generated before grpcio-tools 1.62:
    a generic handler alone."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))


@pytest.mark.parametrize("add", [reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                                 _generic_only], ids=["registered", "generic"])
@pytest.mark.timeout(60)
async def test_an_idle_stream_of_your_own_reflection_servicer_does_not_hold_the_drain(
        registry: LocalRegistry, add: Any) -> None:
    grace_s = 8.0
    own = reflection.aio.ReflectionServicer(["meshkit.test.Echo", _SERVICE])
    srv = meshkit.MeshServer(
        "ownreflectd", [add_echo("r1"), (add, own)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="r1", drain_delay_s=0.0,
                                     grace_s=grace_s, admin=None))
    await srv.start()
    drained = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = ch.stream_stream(
                f"/{_SERVICE}/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            answer = await asyncio.wait_for(call.read(), 10)
            assert [s.name for s in answer.list_services_response.service] == [
                "grpc.reflection.v1alpha.ServerReflection", "meshkit.test.Echo"]
            began = time.monotonic()
            await asyncio.wait_for(srv.drain(), 20)
            drained = True
            took = time.monotonic() - began
            assert took < grace_s - 2, took  # not the whole grace_s
            assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK
    finally:
        if not drained:
            await srv.drain()
