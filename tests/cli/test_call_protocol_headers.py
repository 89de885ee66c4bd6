"""``meshkit call -H`` with a header HTTP/2 or gRPC's wire protocol leaves to the
transport: a connection-specific header (RFC 9113 8.2.2: "An endpoint MUST NOT generate
an HTTP/2 message containing connection-specific header fields ... Any message
containing connection-specific header fields MUST be treated as malformed"), ``host``
beside the ``:authority`` gRPC sends (RFC 9113 8.3.1), and the headers gRPC over HTTP/2
sets itself (``PROTOCOL-HTTP2.md``: ``content-type``, ``te``, ``user-agent``), which grpc
core drops without a word. Each is a usage error naming the key, exit 2, nothing sent;
never a call that a proxy resets as malformed, nor one sent without what was asked."""

from __future__ import annotations

import json

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import at_once, greeter, meshkit_cli, uri

pytestmark = pytest.mark.timeout(90)

__all__ = ["greeter"]  # the fixture, used by name

_SECRET = "s3cr3t-value-do-not-print"
_REFUSED = ["Connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
            "host", "te", "content-type", "user-agent"]


async def test_protocol_headers_are_refused_not_sent_or_dropped(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """``-H 'Connection: close'`` (a curl habit) was sent as request metadata, so the
    call carried a connection-specific header (Envoy, nginx and Go's HTTP/2 server reset
    such a stream: PROTOCOL_ERROR); ``host`` was sent beside ``:authority``; ``te``,
    ``content-type`` and ``user-agent`` were dropped by grpc core, the call made without
    them, exit 0. Each is now refused before dialling: exit 2, one line naming the key,
    never the value. An ordinary header still goes through."""
    reg = ["--registry", uri(registry), "--insecure", "--timeout-s", "10"]
    ok, *refused = await at_once(
        meshkit_cli("call", "greeter/Headers", "{}", *reg, "-H", "x-connection: close"),
        *(meshkit_cli("call", "greeter/Headers", "{}", *reg, "-H", f"{key}: {_SECRET}")
          for key in _REFUSED))
    code, out, err = ok
    assert code == 0, err
    assert json.loads(out)["md"]["x-connection"] == "close"
    for key, (code, out, err) in zip(_REFUSED, refused, strict=True):
        assert (code, out) == (2, ""), (key, code, out, err)
        assert len(err.splitlines()) == 1 and f"'{key.lower()}'" in err, (key, err)
        assert _SECRET not in err and "Traceback" not in err, (key, err)


async def test_a_pseudo_header_is_refused_as_one(tmp_path: object) -> None:
    """``-H ':authority: other'`` was refused as "got an empty key" (the pair is split at
    its first ``:``), which names neither the key nor the reason: it is a pseudo-header,
    which gRPC sets itself (RFC 9113 8.3)."""
    code, out, err = await meshkit_cli("call", "greeter/Headers", "{}", "--insecure",
                                       "-H", f":authority: {_SECRET}")
    assert (code, out) == (2, ""), err
    assert len(err.splitlines()) == 1 and "pseudo-header" in err, err
    assert _SECRET not in err, err
