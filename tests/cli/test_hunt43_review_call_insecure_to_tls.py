"""``meshkit call --insecure`` to a server that requires TLS says that it may.

It read only ``ERROR: UNAVAILABLE: service 'whod': all 1 endpoints are failing or
ejected`` (exit 78): a plaintext channel has no TLS probe, so no reason was given, and
the cause (plaintext HTTP/2 against a TLS port) was left to guess. Now, when a
plaintext call fails UNAVAILABLE, each endpoint that answers a TLS handshake is named
with a hint (give --cert-dir / --workload instead of --insecure). An endpoint that is
simply down (connection refused) gets no such hint.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.discovery import Instance, LocalRegistry
from tests.cli.test_ops_commands import meshkit_cli, uri

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[int]:
    """A plain grpc.aio mTLS server (whod's certificate); its port."""
    pki = tmp_path / "pki"
    init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=2)
    files = issue_into_dir(pki, "whod", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    server = grpc.aio.server()
    creds = grpc.ssl_server_credentials(
        [(files.key_file.read_bytes(), files.cert_file.read_bytes())],
        root_certificates=files.ca_file.read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    yield port
    await server.stop(0)


async def test_insecure_call_to_a_tls_server_hints_at_tls(
        tls_server: int, registry: LocalRegistry) -> None:
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=tls_server))
    code, out, err = await meshkit_cli("call", "whod/t.Who/Who", "{}", "--registry",
                                       uri(registry), "--insecure", "--timeout-s", "5")
    assert code == 64 + grpc.StatusCode.UNAVAILABLE.value[0], err
    assert "all 1 endpoints are failing" in err, err
    assert f"w1 at 127.0.0.1:{tls_server}" in err and "TLS" in err, err
    assert "--cert-dir" in err and "Traceback" not in err, err
    assert out == "", err


async def test_insecure_call_to_a_closed_port_gives_no_tls_hint(
        registry: LocalRegistry) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    code, _, err = await meshkit_cli("call", "whod/t.Who/Who", "{}", "--registry",
                                     uri(registry), "--insecure", "--timeout-s", "5")
    assert code == 64 + grpc.StatusCode.UNAVAILABLE.value[0], err
    assert "TLS" not in err, err
