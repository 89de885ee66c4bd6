"""Server reflection answers ``file_containing_symbol`` for a method's full name."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

import meshkit
from examples.ecom.proto import order_pb2_grpc
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo


async def _ask(ch: grpc.aio.Channel, version: str,
               request: reflection_pb2.ServerReflectionRequest
               ) -> reflection_pb2.ServerReflectionResponse:
    call = ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    answers = [a async for a in call(iter([request]), timeout=5)]
    assert len(answers) == 1, answers
    return answers[0]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_file_containing_symbol_finds_a_methods_file(
        registry: LocalRegistry, version: str) -> None:
    """reflection.proto's ``file_containing_symbol``: "This field should be a
    fully-qualified symbol name (e.g. <package>.<service>[.<method>] or
    <package>.<type>)". A method's name (what ``grpcurl describe pkg.Svc.Method`` asks)
    was answered ``NOT_FOUND``: grpcio-reflection asks protobuf's (upb) pool, which
    finds services, messages, enums and fields but no methods. Now a method's name is
    answered with the file that declares its service (as grpc-go, grpc-java and C++
    servers answer); a method the service does not have is still ``NOT_FOUND``."""
    srv = meshkit.MeshServer(
        "reflectd", [add_echo("r1"), (order_pb2_grpc.add_OrderServiceServicer_to_server,
                                      order_pb2_grpc.OrderServiceServicer())],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="r1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with asyncio.timeout(20), \
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for service, method in (("grpc.health.v1.Health", "Watch"),
                                    ("ecom.v1.OrderService", "PlaceOrder")):
                answer = await _ask(ch, version, reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=f"{service}.{method}"))
                assert answer.WhichOneof("message_response") == "file_descriptor_response", (
                    service, method, answer)
                first = descriptor_pb2.FileDescriptorProto.FromString(
                    answer.file_descriptor_response.file_descriptor_proto[0])
                declared = {f"{first.package}.{s.name}": [m.name for m in s.method]
                            for s in first.service}
                assert method in declared.get(service, []), (service, method, declared)
            for missing in ("grpc.health.v1.Health.Nope", "ecom.v1.OrderService.",
                            "no.such.Service.Method"):
                answer = await _ask(ch, version, reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=missing))
                assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], (
                    missing, answer)
    finally:
        await asyncio.wait_for(srv.drain(), 10)
