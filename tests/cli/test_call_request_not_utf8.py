"""``meshkit call`` with a request argument that is not UTF-8 (typed in a Latin-1
terminal, read from a file in another encoding by ``"$(cat req.json)"``) says so, as it
does for such a request on stdin."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import greeter, meshkit_cli, uri

pytestmark = pytest.mark.timeout(60)

__all__ = ["greeter"]  # the fixture, imported to be used here


async def test_a_request_argument_that_is_not_utf8_is_named_so(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """It said 'request is not a valid meshkit.clitest.HelloRequest: Failed to parse name
    field: Unpaired surrogate at HelloRequest.name.', after the registry and reflection
    reads: the argument's undecodable byte (Latin-1 'é', 0xe9) as Python's surrogate."""
    code, out, err = await meshkit_cli(
        "call", "greeter/Greeter/SayHello", b'{"name": "Ren\xe9"}',  # type: ignore[arg-type]
        "--registry", uri(registry), "--insecure")
    assert (code, out) == (2, ""), (code, err)
    assert err == "meshkit call: the request argument is not UTF-8 (byte 13)\n", err
