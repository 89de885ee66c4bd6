"""``meshkit call``'s text-format fallback never writes raw terminal control characters.

A response with no proto3 JSON form (a ``Struct`` holding NaN) is printed in protobuf's
text format (``text_format.MessageToString``). Its ``as_utf8`` default is ``True`` on the
protobuf meshkit runs on (7.x; it was ``False`` before): non-ASCII characters are then
written as they are, and only C0 controls are escaped, so a C1 CSI (U+009B), a bidi
override (U+202E) or a NEL (U+0085) the server put in a string reached the terminal raw,
as the JSON paths (``ensure_ascii``) and stderr (``printable()``) stop them doing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import text_format

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_call_json import RICH, Rich, rich_grpc, rich_pb
from tests.cli.test_ops_commands import meshkit_cli, uri

pytestmark = pytest.mark.timeout(60)

_ODD = "x\x9b2J\u202egnp\x85\x1b[2J é"


class _NaNEcho(Rich):
    """``Make`` answers the request's ``a`` beside a ``Struct`` holding NaN (no proto3
    JSON form: printed in text format)."""

    async def Make(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        out = rich_pb.Rich(a=request.a)
        out.st["ratio"] = float("nan")
        return out


@pytest.fixture
async def nan_echo(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    server = meshkit.MeshServer(
        "nanecho", [(rich_grpc.add_RichServiceServicer_to_server, _NaNEcho())],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="nanecho-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


async def test_a_text_format_response_reaches_stdout_without_control_characters(
        nan_echo: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """The text-format answer has every character printable (C1, bidi and non-ASCII
    escaped) and still parses back to the values the server sent."""
    request = '{"a": "x\\u009b2J\\u202egnp\\u0085\\u001b[2J \\u00e9"}'
    code, out, err = await meshkit_cli(
        "call", f"nanecho/{RICH}/Make", request, "--registry", uri(registry),
        "--insecure", "--timeout-s", "10")
    assert code == 0, err
    assert "no proto3 JSON form" in err, err
    assert all(c.isprintable() or c in "\n " for c in out), repr(out)
    assert text_format.Parse(out, rich_pb.Rich()).a == _ODD, repr(out)
