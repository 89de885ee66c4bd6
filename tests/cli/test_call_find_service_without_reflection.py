"""``meshkit call /pkg.Svc/Method`` (no mesh service named) where the service that
serves it has no gRPC reflection: each listed service is asked through reflection which
gRPC services it serves, and one without reflection was skipped without a word, so the
usage error said "no service in the registry serves 'pkg.Svc'; name it with --service",
false of a registry whose ``mute`` serves it, and silent on why it was not found. The
message now names the services that could not be asked (they serve no reflection) and
the fix, as 8930d40 does for a named service; exit status 2 as before."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_call_without_reflection import mute
from tests.cli.test_ops_commands import meshkit_cli, uri

pytestmark = pytest.mark.timeout(60)

__all__ = ["mute"]  # the fixture, used by name


async def test_a_full_name_target_names_the_services_without_reflection(
        mute: meshkit.MeshServer, registry: LocalRegistry) -> None:
    code, out, err = await meshkit_cli(
        "call", "/meshkit.clitest.Greeter/SayHello", "{}", "--registry", uri(registry),
        "--insecure", "--timeout-s", "10")
    assert (code, out) == (2, ""), (code, err)
    assert len(err.splitlines()) == 1, err
    assert "'mute'" in err and "reflection" in err, err
    assert "ServeOptions(reflection=True)" in err and "--service" in err, err
