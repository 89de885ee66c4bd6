"""A CA renewed with its key beside the old certificate in ``ca.pem`` works in the handshake
whatever their order and whichever of them is valid.

grpc's BoringSSL takes, among the trust bundle's CA certificates with the leaf's issuer
name and key, the first one in the bundle, valid or not: with the old certificate first
(``cat ca.pem renewed.pem``, the README's rotation) every handshake failed
``UNAVAILABLE`` ("certificate has expired") from the moment the old one expired, the very
expiry the renewal was made for, while ``TLSOptions`` and the peer verifier took the
bundle (they try every candidate); a renewed certificate not valid yet put first failed
every handshake at once. meshkit now hands grpc each such group valid-now first (the
latest to expire first), and reads the files again when that order would change (one of
them enters or leaves its validity period), so the order in force follows the clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.auth import TLSOptions, create_ca, issue_workload
from tests.auth.chains import key_pem, key_usage, pem
from tests.auth.conftest import TD, StartServer, call, start_server  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def _same_key(key: ec.EllipticCurvePrivateKey, base: x509.Certificate,
              not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    """``base`` renewed with its key: same subject, key and extensions, another period."""
    builder = (x509.CertificateBuilder().subject_name(base.subject).issuer_name(base.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    for ext in base.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(key, hashes.SHA256())


def _files(d: Path, bundle: list[x509.Certificate], key: ec.EllipticCurvePrivateKey,
           issuer: x509.Certificate) -> dict[str, TLSOptions]:
    d.mkdir()
    (d / "ca.pem").write_bytes(pem(*bundle))
    out = {}
    for service in ("orderd", "userd"):
        k, c = issue_workload(key, issuer, service, ttl_h=1)
        (d / f"{service}.pem").write_bytes(pem(c))
        (d / f"{service}.key").write_bytes(key_pem(k))
        out[service] = TLSOptions(ca_file=d / "ca.pem", cert_file=d / f"{service}.pem",
                                  key_file=d / f"{service}.key", reload_interval_s=0.05)
    return out


async def _call(start_server: StartServer, tls: dict[str, TLSOptions]) -> bytes:  # noqa: F811
    server = tls["orderd"]
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    return await call(port, credentials=tls["userd"].channel_credentials(),
                      options=server.channel_options("orderd"))


@pytest.mark.parametrize("case", ["old_expired_first", "renewed_not_valid_yet_first"])
async def test_a_renewed_ca_beside_the_old_one_in_either_order(
        tmp_path: Path, start_server: StartServer, case: str) -> None:  # noqa: F811
    now = dt.datetime.now(dt.UTC)
    key, base = create_ca(trust_domain=TD, ttl_days=30, now=now - dt.timedelta(days=2))
    if case == "old_expired_first":  # the old one expired yesterday, the renewal valid
        bundle = [_same_key(key, base, now - dt.timedelta(days=30), now - dt.timedelta(days=1)),
                  base]
    else:  # the renewal ready for tomorrow, the old one valid today
        bundle = [_same_key(key, base, now + dt.timedelta(days=1), now + dt.timedelta(days=90)),
                  base]
    tls = _files(tmp_path / "pki", bundle, key, base)
    assert await _call(start_server, tls) == f"spiffe://{TD}/svc/userd|-".encode()


async def test_the_order_follows_the_clock_without_a_file_change(
        tmp_path: Path, start_server: StartServer) -> None:  # noqa: F811
    """Read while the old certificate is valid and the renewal is not yet: the old one
    first. The renewal's notBefore comes (2 s), then the old one's notAfter (4 s), the
    files unchanged: a server built before both still verifies its clients after them,
    and a client's credentials reloader rebuilds (a new generation) to take the order."""
    t0 = math.ceil(time.time()) + 1
    at = dt.datetime.fromtimestamp
    key, base = create_ca(trust_domain=TD, ttl_days=30)
    old = _same_key(key, base, at(t0 - 3600, dt.UTC), at(t0 + 4, dt.UTC))
    renewed = _same_key(key, base, at(t0 + 2, dt.UTC), at(t0 + 3600, dt.UTC))
    tls = _files(tmp_path / "pki", [old, renewed], key, base)
    server = tls["orderd"]
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    reloader = tls["userd"].channel_reloader()
    assert await call(port, credentials=tls["userd"].channel_credentials(),
                      options=server.channel_options("orderd")) == (
        f"spiffe://{TD}/svc/userd|-".encode())
    # past both times (BoringSSL: expired from its notAfter second on)
    await asyncio.sleep(max(0.0, t0 + 5.5 - time.time()))
    assert reloader.check(force=True)  # the order in force changed: rebuild
    # a new connection: the server's roots as read before both times, unless read again
    got = await call(port, credentials=reloader.credentials,
                     options=server.channel_options("orderd"))
    assert got == f"spiffe://{TD}/svc/userd|-".encode()


def _leaf_without_key_id(key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate,
                         service: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A workload certificate with no authority key identifier (a hand-rolled issuer)."""
    own = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(issuer.subject).public_key(own.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(sign_certs=False), critical=True)  # X.509-SVID §4.3
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/{service}"),
                x509.DNSName(f"{service}.svc.{TD}")]), critical=False)
            .sign(key, hashes.SHA256()))
    return own, cert


async def test_cas_of_one_name_with_other_keys_keep_the_files_order(
        tmp_path: Path, start_server: StartServer) -> None:  # noqa: F811
    """Two meshkit CAs of one trust domain (one name, different keys: a rotation to a new
    key) stay in the file's order: a leaf without an authority key identifier is taken
    by BoringSSL under the first of that name, so moving the longer-lived new CA first
    would refuse the leaves the first one issued."""
    key, ca = create_ca(trust_domain=TD, ttl_days=30)
    _new_key, new = create_ca(trust_domain=TD, ttl_days=90)
    assert new.subject == ca.subject
    d = tmp_path / "pki"
    d.mkdir()
    (d / "ca.pem").write_bytes(pem(ca, new))
    tls = {}
    for service in ("orderd", "userd"):
        k, c = _leaf_without_key_id(key, ca, service)
        (d / f"{service}.pem").write_bytes(pem(c))
        (d / f"{service}.key").write_bytes(key_pem(k))
        tls[service] = TLSOptions(ca_file=d / "ca.pem", cert_file=d / f"{service}.pem",
                                  key_file=d / f"{service}.key")
    assert await _call(start_server, tls) == f"spiffe://{TD}/svc/userd|-".encode()
