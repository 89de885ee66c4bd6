"""``meshkit call -H ... /pkg.Svc/Method`` sends the headers only to the service that
serves the method, and to a listed service whose reflection refuses a call without them.

To find which listed mesh service serves ``/pkg.Svc/Method``, the command asks each
one's reflection. Each of those requests carried the ``-H`` metadata: the user's bearer
token reached every service in the registry (a shared Consul catalog, other teams'
services, plaintext ones with ``--insecure``) though the user named none of them. The
probes now go without the headers; a service whose reflection refuses that
``UNAUTHENTICATED`` (meshkit's JWT auth covers reflection unless made public) is asked
again with them, so a token-protected service is still found.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import Echoer, Greeter, meshkit_cli, services, uri

pytestmark = pytest.mark.timeout(90)

_TOKEN = "Bearer s3cr3t-token-for-greeter"


class _Recorder(grpc.aio.ServerInterceptor):
    """Notes the ``authorization`` value of every call the server takes, by method."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        md = dict(details.invocation_metadata or ())  # type: ignore[arg-type]
        value = md.get("authorization")
        self.seen.append((details.method, None if value is None else str(value)))
        return await continuation(details)


async def test_a_bystander_service_never_sees_the_headers(registry: LocalRegistry) -> None:
    """A listed service that does not serve the method is asked without the headers; the
    one that does gets them on its own reflection requests and the call."""
    bystander_seen, greeter_seen = _Recorder(), _Recorder()
    bystander = meshkit.MeshServer(
        "bystander", [(services.add_EchoerServicer_to_server, Echoer())], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="bystander-1",
                                     drain_delay_s=0, grace_s=1,
                                     interceptors=(bystander_seen,)))
    greeter = meshkit.MeshServer(
        "greeter", [(services.add_GreeterServicer_to_server, Greeter())], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="greeter-1",
                                     drain_delay_s=0, grace_s=1,
                                     interceptors=(greeter_seen,)))
    await bystander.start()
    await greeter.start()
    try:
        code, out, err = await meshkit_cli(
            "call", "/meshkit.clitest.Greeter/SayHello", '{"name": "Ada"}',
            "--registry", uri(registry), "--insecure", "--timeout-s", "10",
            "-H", f"authorization: {_TOKEN}")
    finally:
        await greeter.drain()
        await bystander.drain()
    assert (code, err) == (0, ""), (code, err)
    assert json.loads(out) == {"message": "Hello, Ada!"}
    asked: list[Any] = [m for m, _ in bystander_seen.seen if "reflection" in m]
    assert asked, bystander_seen.seen  # it was asked
    assert all(v is None for _, v in bystander_seen.seen), bystander_seen.seen
    called = [v for m, v in greeter_seen.seen if m.endswith("/SayHello")]
    assert called == [_TOKEN], greeter_seen.seen
