"""A reflection server's ``error_response`` message reaches ``meshkit call``'s stderr
with its control characters escaped (37b53d8's ``printable()`` on the usage-error line):
the server chooses that text as it chooses a status message, and raw an ESC sequence
would act on the terminal of whoever runs the command. No test pinned the escaping on
this line (the status-message line's test did not fail with it removed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import Greeter, meshkit_cli, services, uri

pytestmark = pytest.mark.timeout(60)

_MESSAGE = "\x1b]0;pwned\x07\x1b[2J gone\nERROR: OK: forged \x9b31m \u202e"


class _Erring(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """A reflection service of one's own answering every request with an error."""

    async def ServerReflectionInfo(self, request_iterator: Any,
                                   context: grpc.aio.ServicerContext) -> Any:
        async for request in request_iterator:
            yield reflection_pb2.ServerReflectionResponse(
                original_request=request,
                error_response=reflection_pb2.ErrorResponse(error_code=5,
                                                            error_message=_MESSAGE))


@pytest.fixture
async def erring(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    server = meshkit.MeshServer(
        "erring", [(services.add_GreeterServicer_to_server, Greeter()),
                   (reflection_pb2_grpc.add_ServerReflectionServicer_to_server, _Erring())],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="erring-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


def _controls(text: str) -> Iterator[str]:
    return (c for c in text if not (c.isprintable() or c == "\n"))


async def test_a_reflection_error_reaches_stderr_escaped(
        erring: meshkit.MeshServer, registry: LocalRegistry) -> None:
    code, out, err = await meshkit_cli(
        "call", "erring/SayHello", "{}", "--registry", uri(registry), "--insecure",
        "--timeout-s", "10")
    assert (code, out) == (2, ""), (code, err)
    assert not list(_controls(err)), repr(err)
    assert err.splitlines() == [
        "meshkit call: reflection: \\x1b]0;pwned\\x07\\x1b[2J gone\\nERROR: OK: forged "
        "\\x9b31m \\u202e"], repr(err)
