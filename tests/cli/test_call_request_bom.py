"""``meshkit call``: a request whose JSON text starts with a byte order mark (what
Windows editors and PowerShell 5's redirection write) is read as the JSON after it
(RFC 8259 8.1: a parser may ignore it)."""

from __future__ import annotations

import re

import pytest

import meshkit
from meshkit._cli._call import _Args, _run
from meshkit._cli.call import parse_target
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import greeter, meshkit_cli, uri

pytestmark = pytest.mark.timeout(60)

__all__ = ["greeter"]  # the fixture, imported to be used here


async def test_a_request_with_a_byte_order_mark_is_read(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """It failed 'request is not valid JSON: Unexpected UTF-8 BOM (decode using
    utf-8-sig)', exit 2, after the registry and reflection reads."""
    args = _Args(parse_target("greeter/Greeter/SayHello"), '\ufeff{"name": "x"}', registry,
                 meshkit.DialOptions(insecure=True, telemetry=None), (), 10.0)
    text, warning = await _run(args)
    assert warning is None
    assert re.search(r'"message": "Hello, x!"', text), text


async def test_a_request_on_stdin_with_a_byte_order_mark_is_read(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    status, out, err = await meshkit_cli("call", "greeter/Greeter/SayHello", "-", "--registry",
                                         uri(registry), "--insecure",
                                         stdin=b'\xef\xbb\xbf{"name": "x"}\r\n')
    assert (status, err) == (0, ""), (status, err)
    assert '"message": "Hello, x!"' in out, out
