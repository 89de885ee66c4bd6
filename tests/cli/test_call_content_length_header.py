"""``meshkit call -H 'content-length: N'``: HTTP/2 frames a message's body itself, and in
a request ``content-length`` must equal the sum of its DATA frames' payload lengths or
the request is malformed (RFC 9113 8.1.1: "A request or response is also malformed if
the value of a content-length header field does not equal the sum of the DATA frame
payload lengths"); grpc core drops the header unsent. As for ``te`` or ``content-type``
(c85544b), the call was made without what was asked, exit 0. It is now a usage error
naming the key, never its value, exit 2, nothing sent."""

from __future__ import annotations

import json

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import at_once, greeter, meshkit_cli, uri

pytestmark = pytest.mark.timeout(90)

__all__ = ["greeter"]  # the fixture, used by name

_SECRET = "4242424242"


async def test_content_length_is_refused_not_dropped(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    reg = ["--registry", uri(registry), "--insecure", "--timeout-s", "10"]
    ok, *refused = await at_once(
        meshkit_cli("call", "greeter/Headers", "{}", *reg, "-H", "x-content-length: 5"),
        meshkit_cli("call", "greeter/Headers", "{}", *reg, "-H", f"content-length: {_SECRET}"),
        meshkit_cli("call", "greeter/Headers", "{}", *reg, "-H", f"Content-Length: {_SECRET}"))
    code, out, err = ok
    assert code == 0, err
    assert json.loads(out)["md"]["x-content-length"] == "5"
    for code, out, err in refused:
        assert (code, out) == (2, ""), (code, out, err)
        assert len(err.splitlines()) == 1 and "'content-length'" in err, err
        assert _SECRET not in err and "Traceback" not in err, err
