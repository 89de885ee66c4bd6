"""``meshkit call`` against a reflection server whose files cannot be loaded (imports in
a cycle, a file importing itself, bytes that are no file descriptor, a file protobuf
cannot build): one line on stderr, exit 2, never a traceback. protoc forbids import
cycles, but reflection answers are the server's word: a hand-made or buggy
implementation sends anything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import Greeter, meshkit_cli, services, uri

pytestmark = pytest.mark.timeout(60)


def _file(name: str, deps: list[str], *, service: bool, bad_type: bool = False) -> bytes:
    fd = descriptor_pb2.FileDescriptorProto(name=name, package="cyc", syntax="proto3",
                                            dependency=deps)
    msg = fd.message_type.add(name=f"M{name[0].upper()}")
    if bad_type:  # a field of a type no file defines
        msg.field.add(name="x", number=1, type_name=".cyc.Nowhere",
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    if service:
        svc = fd.service.add(name="Svc")
        svc.method.add(name="Do", input_type=f".cyc.{msg.name}",
                       output_type=f".cyc.{msg.name}")
    return fd.SerializeToString()


_CASES = {
    "cycle": {"a.proto": _file("a.proto", ["b.proto"], service=True),
              "b.proto": _file("b.proto", ["a.proto"], service=False)},
    "self": {"a.proto": _file("a.proto", ["a.proto"], service=True)},
    "garbage": {"a.proto": b"\xff\xff\xff\xff"},
    "unbuildable": {"a.proto": _file("a.proto", [], service=True, bad_type=True)},
}


class _Files(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """A reflection service of one's own, answering from ``files`` (every symbol's file
    is ``a.proto``)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def ServerReflectionInfo(self, request_iterator: Any,
                                   context: grpc.aio.ServicerContext) -> Any:
        async for request in request_iterator:
            if request.HasField("list_services"):
                yield reflection_pb2.ServerReflectionResponse(
                    original_request=request,
                    list_services_response=reflection_pb2.ListServiceResponse(
                        service=[reflection_pb2.ServiceResponse(name="cyc.Svc")]))
                continue
            name = (request.file_by_filename if request.HasField("file_by_filename")
                    else "a.proto")
            yield reflection_pb2.ServerReflectionResponse(
                original_request=request,
                file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                    file_descriptor_proto=[self.files[name]]))


@pytest.fixture(params=sorted(_CASES))
async def odd(request: pytest.FixtureRequest,
              registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    server = meshkit.MeshServer(
        "odd", [(services.add_GreeterServicer_to_server, Greeter()),
                (reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                 _Files(_CASES[request.param]))],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="odd-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


@pytest.mark.parametrize("target", ["odd/Do", "odd/cyc.Svc/Do"])
async def test_files_that_cannot_load_end_in_one_line(
        odd: meshkit.MeshServer, registry: LocalRegistry, target: str) -> None:
    """Each ended in a traceback, exit 1: RecursionError (a cycle, a file importing
    itself), DecodeError, TypeError ("Couldn't build proto file")."""
    code, out, err = await meshkit_cli(
        "call", target, "{}", "--registry", uri(registry), "--insecure",
        "--timeout-s", "10")
    assert "Traceback" not in err, err
    assert (code, out) == (2, ""), (code, err)
    assert len(err.splitlines()) == 1, err
    if target == "odd/cyc.Svc/Do":  # the service named: reflection's failure said
        assert "meshkit call: reflection: " in err, err
