"""What a server or a registry says reaches the terminal of ``meshkit call`` and ``meshkit
services`` as text, never as terminal control sequences: a status message (a server's
``context.abort(code, details)``, any bytes grpc-message percent-encodes) and a registry's
instance id (1..128 characters of any kind) are written with their control characters
(C0, DEL, C1, Unicode format characters such as U+202E) escaped, as ``repr`` writes them.
Raw, an ESC sequence clears the screen, retitles the window or (OSC 52) writes the
clipboard of whoever runs the command (CVE-2021-25743 is kubectl's case of it), and a line
break forges a line in output a script reads line by line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.cli.test_ops_commands import meshkit_cli, protos, services, uri

pytestmark = pytest.mark.timeout(60)

_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


class _Refuser(services.GreeterServicer):  # type: ignore[misc,name-defined]
    """``SayHello`` fails FAILED_PRECONDITION with the request's name as its message."""

    async def SayHello(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.name)
        return protos.HelloReply()  # pragma: no cover - abort raises


@pytest.fixture
async def refuser(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    server = meshkit.MeshServer(
        "refuser", [(services.add_GreeterServicer_to_server, _Refuser())], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="refuser-1",
                                     drain_delay_s=0, grace_s=1))
    await server.start()
    yield server
    await server.drain()


async def test_a_status_message_reaches_stderr_with_its_control_characters_escaped(
        refuser: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """A failed call's status message was printed as the server sent it: ``ESC ] 0 ;
    ... BEL`` retitled the terminal, ``ESC [ 2 J`` cleared it, a C1 CSI (U+009B) did the
    same on terminals that take C1, and a line break split the one ``ERROR:`` line. The
    message is now on one line, each control character escaped, exit status unchanged."""
    details = "\x1b]0;pwned\x07\x1b[2J lost\nERROR: OK: forged \x9b31m \u202egnp.exe\r"
    code, out, err = await meshkit_cli(
        "call", "refuser/SayHello", json.dumps({"name": details}),
        "--registry", uri(registry), "--insecure", "--timeout-s", "10")
    assert (code, out) == (64 + 9, ""), (code, err)
    assert not any(c in err for c in _CONTROLS), repr(err)
    assert err.splitlines() == [
        "ERROR: FAILED_PRECONDITION: \\x1b]0;pwned\\x07\\x1b[2J lost\\nERROR: OK: forged "
        "\\x9b31m \\u202egnp.exe\\r"], repr(err)


async def test_services_table_escapes_control_characters_of_a_registry_entry(
        tmp_path: Path) -> None:
    """An instance id is any 1..128 characters, so a registry entry (anyone who can write
    to the Consul catalog or the local registry file) with an ESC sequence or a line break
    in its id reached the terminal raw through ``meshkit services``, and forged a row in
    the table scripts read line by line. The table now shows it escaped, one row per
    instance; ``--json`` already escaped it (JSON strings do)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0))
    odd = "odd\x1b[2J\nforged  127.0.0.1:1  ready\u202e"
    try:
        await reg.register(Instance(service="svc", instance_id=odd, host="127.0.0.1",
                                    port=20001))
        code, out, err = await meshkit_cli("services", "--registry",
                                           f"local://{tmp_path / 'reg'}")
        jcode, jout, jerr = await meshkit_cli("services", "--json", "--registry",
                                              f"local://{tmp_path / 'reg'}")
    finally:
        await reg.close()
    assert code == 0, err
    assert not any(c in out for c in _CONTROLS), repr(out)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("SERVICE"), repr(out)
    assert "odd\\x1b[2J\\nforged  127.0.0.1:1  ready\\u202e" in lines[1], repr(out)
    assert jcode == 0 and [r["instance_id"] for r in json.loads(jout)] == [odd], jerr
