"""A renewed client certificate the server refuses: the warning says why.

A CA rotation half done: the client's bundle trusts the old and the new mesh CA, its
certificate is renewed by the new one, and the server still trusts only the old one.
The channel's make-before-break rebuild keeps calls on the established connection
(right) and logged ``renewed sub-channel could not connect; calls stay on the established
connection`` with nothing saying why (grpcio exposes no handshake error). Now the warning
carries the reason the endpoint's TLS probe (:mod:`meshkit.auth._probe`, with the renewed
files) found: the server refused this client's certificate.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import TD, StartServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


async def test_a_renewal_the_server_refuses_is_logged_with_the_reason(
        tmp_path: Path, registry: LocalRegistry, start_server: StartServer) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    init_ca_dir(old, trust_domain=TD, ttl_days=2)
    init_ca_dir(new, trust_domain=TD, ttl_days=2)
    server = issue_into_dir(old, "whod", ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    first = issue_into_dir(old, "clientd", ttl_h=1.0)
    renewed = issue_into_dir(new, "clientd", ttl_h=1.0)
    client = tmp_path / "client"
    client.mkdir()
    (client / "ca.pem").write_bytes((old / "ca.pem").read_bytes()
                                    + (new / "ca.pem").read_bytes())
    (client / "clientd.pem").write_bytes(first.cert_file.read_bytes())
    (client / "clientd.key").write_bytes(first.key_file.read_bytes())
    (client / "clientd.key").chmod(0o600)
    tls = TLSOptions(ca_file=client / "ca.pem", cert_file=client / "clientd.pem",
                     key_file=client / "clientd.key", reload_interval_s=0.05)
    port = await start_server(grpc.ssl_server_credentials(
        [(server.key_file.read_bytes(), server.cert_file.read_bytes())],
        root_certificates=(old / "ca.pem").read_bytes(), require_client_auth=True))
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    opts = meshkit.DialOptions(tls=tls, retry=None, outlier=None)
    with capture_logs() as logs:
        async with meshkit.dial("whod", registry=registry, options=opts) as ch:
            whoami = ch.unary_unary("/test.Auth/Whoami")
            assert await whoami(b"", timeout=5)
            # the renewal by the new CA: both files replaced (key first, as a renewal
            # job writes them; the reloader takes the pair once they match)
            (client / "clientd.key").write_bytes(renewed.key_file.read_bytes())
            (client / "clientd.pem").write_bytes(renewed.cert_file.read_bytes())

            def warned() -> list[dict[str, object]]:
                return [e for e in logs
                        if e["event"].startswith("renewed sub-channel could not connect")]

            await until(lambda: bool(warned()), timeout_s=30,
                        what="the renewed sub-channel's warning")
            assert await whoami(b"", timeout=5)  # still on the established connection
    (line,) = warned()
    assert line["reason"] == (
        "the server closed the connection after the handshake: it refused this client's "
        f"certificate spiffe://{TD}/svc/clientd (is it of a CA the server trusts?)"), line
