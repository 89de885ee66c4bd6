"""``meshkit call``'s response on stdout never carries raw terminal control characters.
The response's JSON is protobuf's ``MessageToJson`` (``ensure_ascii``: every non-ASCII
character written ``\\uXXXX``), but a response holding an ``Any`` of a type nobody
describes was printed through ``json.dumps(..., ensure_ascii=False)``, which escapes
only C0: a C1 CSI (U+009B), DEL or a bidi override (U+202E) the server put in a string
(here the ``Any``'s type URL) reached the terminal raw, as 37b53d8 stopped them doing on
stderr. Now escaped as JSON escapes them on both paths: the output is still JSON, with
the same values."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.cli.test_ops_commands import Echoer, meshkit_cli, protos, services, uri

pytestmark = pytest.mark.timeout(60)

_URL = "type.example.com/odd\x9b2J\x7f\u202egnp.\x85"


class _Opaque(Echoer):
    """``Wrap`` answers an ``Any`` of a type no reflection describes, its URL odd."""

    async def Wrap(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        out = protos.Wrapped()
        out.payload.type_url = _URL
        out.payload.value = b"\x01\x02"
        return out


@pytest.fixture
async def opaque(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    server = meshkit.MeshServer(
        "opaque", [(services.add_EchoerServicer_to_server, _Opaque())], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="opaque-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


async def test_an_opaque_any_response_reaches_stdout_without_control_characters(
        opaque: meshkit.MeshServer, registry: LocalRegistry) -> None:
    code, out, err = await meshkit_cli(
        "call", "opaque/Wrap", "{}", "--registry", uri(registry), "--insecure",
        "--timeout-s", "10")
    assert code == 0, err
    assert json.loads(out) == {"payload": {"@type": _URL, "@value": "AQI="}}, repr(out)
    assert all(c.isprintable() or c in "\n " for c in out), repr(out)
