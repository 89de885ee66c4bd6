"""``meshkit call`` on a server that serves no gRPC reflection (``ServeOptions(reflection=
False)``, or a non-meshkit server): the usage error names the mesh service that lacks it
and says how to turn it on, as the README promises "a clear message"; it said only "the
server does not serve gRPC reflection", with no service and no way out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import Greeter, at_once, meshkit_cli, services, uri

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def mute(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    """A plaintext ``mute`` instance serving Greeter without reflection."""
    server = meshkit.MeshServer(
        "mute", [(services.add_GreeterServicer_to_server, Greeter())], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="mute-1", reflection=False,
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


async def test_no_reflection_names_the_service_and_the_fix(
        mute: meshkit.MeshServer, registry: LocalRegistry) -> None:
    reg = ["--registry", uri(registry), "--insecure", "--timeout-s", "10"]
    results = await at_once(
        meshkit_cli("call", "mute/SayHello", "{}", *reg),
        meshkit_cli("call", "mute/meshkit.clitest.Greeter/SayHello", "{}", *reg),
        meshkit_cli("call", "/meshkit.clitest.Greeter/SayHello", "{}", *reg,
                    "--service", "mute"))
    for code, out, err in results:
        assert (code, out) == (2, ""), (code, err)
        assert len(err.splitlines()) == 1, err
        assert "'mute' does not serve gRPC server reflection" in err, err
        assert "ServeOptions(reflection=True)" in err, err
