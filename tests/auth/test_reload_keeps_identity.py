"""A reload renews a workload's certificate; it never changes who the workload is.

Files replaced by another workload's (a Secret mounted for the wrong service, a copy
into the wrong directory), or by a renewal without the identity DNS name clients verify
(a SPIRE SVID whose entry lists no dns_names): ``serve()`` refuses both at start
(:func:`check_server_identity`), but the reloaders swapped them in, so that every new
connection to the server failed (clients verify ``<service>.svc.<td>``) and a client
went on calling as another workload than ``TLSOptions.spiffe_id`` says. They are skipped
now, logged, and the current pair kept.
"""

from __future__ import annotations

import asyncio
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from meshkit.auth import issue_into_dir
from tests.auth.chains import ca_of, key_pem, key_usage, pem
from tests.auth.conftest import TD, Pki, StartServer, call


def _copy_identity(pki: Pki, source: str, target: str) -> None:
    """Put ``source``'s key and certificate in place of ``target``'s (key first)."""
    for ext in ("key", "pem"):
        tmp = pki.dir / f".{target}.{ext}.tmp"
        shutil.copyfile(pki.dir / f"{source}.{ext}", tmp)
        tmp.replace(pki.dir / f"{target}.{ext}")


async def _keeps_serving(pki: Pki, port: int, client_service: str, server_service: str,
                         ) -> None:
    client = pki.options(client_service)
    await asyncio.sleep(0.3)  # several reload intervals
    for _ in range(3):  # new connections, each a handshake that may reload
        assert await call(port, credentials=client.channel_credentials(),
                          options=client.channel_options(server_service))
        await asyncio.sleep(0.1)


async def test_server_reload_skips_another_workloads_certificate(
        pki: Pki, start_server: StartServer) -> None:
    server = pki.issue("userd")  # reload_interval_s=0.05
    pki.issue("orderd")
    pki.issue("gateway")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    with capture_logs() as logs:
        _copy_identity(pki, "gateway", "userd")
        await _keeps_serving(pki, port, "orderd", "userd")
    skipped = [e for e in logs if e["event"] == "certificate reload skipped"]
    assert skipped, [e["event"] for e in logs]
    assert f"spiffe://{TD}/svc/gateway" in skipped[0]["error"]
    assert f"spiffe://{TD}/svc/userd" in skipped[0]["error"]
    assert not any(e["event"] == "server certificate reloaded" for e in logs)


async def test_server_reload_skips_a_renewal_without_the_identity_name(
        pki: Pki, start_server: StartServer) -> None:
    """The renewal is userd's, but (issued elsewhere) without userd.svc.<td>: skipped."""
    server = pki.issue("userd")
    pki.issue("orderd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    with capture_logs() as logs:
        # a renewal without the identity name, as a SPIRE entry without dns_names gives
        # (meshkit's issuer always writes it)
        ca_key, ca = ca_of(pki)
        key = ec.generate_private_key(ec.SECP256R1())
        old = x509.load_pem_x509_certificate((pki.dir / "userd.pem").read_bytes())
        cert = (
            x509.CertificateBuilder()
            .subject_name(old.subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(old.not_valid_before_utc).not_valid_after(old.not_valid_after_utc)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/userd"),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(key_usage(sign_certs=False), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        (pki.dir / "userd.key").write_bytes(key_pem(key))
        (pki.dir / "userd.pem").write_bytes(pem(cert))
        await _keeps_serving(pki, port, "orderd", "userd")
    skipped = [e for e in logs if e["event"] == "certificate reload skipped"]
    assert skipped and f"userd.svc.{TD}" in skipped[0]["error"], [e["event"] for e in logs]
    # a proper renewal is still taken
    issue_into_dir(pki.dir, "userd", ttl_h=1, dns=("localhost",), overwrite=True)
    with capture_logs() as logs:
        await _keeps_serving(pki, port, "orderd", "userd")
    assert any(e["event"] == "server certificate reloaded" for e in logs)


def test_channel_reloader_skips_another_workloads_certificate(pki: Pki) -> None:
    client = pki.issue("orderd")
    pki.issue("gateway")
    reloader = client.channel_reloader()
    creds = reloader.credentials
    with capture_logs() as logs:
        _copy_identity(pki, "gateway", "orderd")
        assert reloader.check(force=True) is False
    assert reloader.credentials is creds and reloader.generation == 1
    assert [e["event"] for e in logs] == ["client certificate reload skipped"]
    assert f"spiffe://{TD}/svc/gateway" in logs[0]["error"]
    assert client.spiffe_id == f"spiffe://{TD}/svc/orderd"
    pki.issue("orderd", overwrite=True)
    assert reloader.check(force=True) is True and reloader.generation == 2
