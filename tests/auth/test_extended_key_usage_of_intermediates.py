"""An intermediate CA's extended key usage counts as much as the leaf's.

grpc's BoringSSL checks the purpose of every certificate of the presented chain that is
not a trust anchor of the verifier (``unsupported certificate purpose``): an
intermediate CA with an extendedKeyUsage extension lacking clientAuth (anyEKU alone
included) makes every client certificate below it refused by every server, one lacking
serverAuth every server certificate below it by every client (as cert-manager issues an
intermediate whose Certificate lists ``usages: [cert sign, server auth]``). 1d8ed7f
checked the leaf only: such a chain built its ``TLSOptions`` / passed ``serve()``'s start
check and then failed every call ``UNAVAILABLE``. An intermediate that is itself in the
trust bundle is an anchor there, not checked (shown on a real server too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

from meshkit.auth import CertificateError, TLSOptions, check_server_identity
from tests.auth.chains import Issuer, foreign_ca, key_pem, pem, secret_dir, secret_tls, svid
from tests.auth.conftest import TD, StartServer, call, rpc_error

pytestmark = pytest.mark.timeout(60)


def _intermediate(root: Issuer, ekus: Sequence[x509.ObjectIdentifier]) -> Issuer:
    key, plain = foreign_ca("intermediate", issuer=root)
    b = (x509.CertificateBuilder().subject_name(plain.subject).issuer_name(plain.issuer)
         .public_key(plain.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(plain.not_valid_before_utc)
         .not_valid_after(plain.not_valid_after_utc))
    for ext in plain.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    b = b.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    return key, b.sign(root[0], hashes.SHA256())


def _options(base: Path, name: str, issuer: Issuer, service: str, *,
             bundle: Sequence[x509.Certificate], via: x509.Certificate | None) -> Path:
    key, cert = svid(issuer, service, dns=(f"{service}.svc.{TD}", "localhost"))
    chain = (cert,) if via is None else (cert, via)
    return secret_dir(base, name, ca=pem(*bundle), crt=pem(*chain), key=key_pem(key))


@pytest.mark.parametrize("ekus", [[EKU.SERVER_AUTH], [EKU.ANY_EXTENDED_KEY_USAGE]],
                         ids=["serverAuth", "anyEKU"])
async def test_a_client_chain_through_an_intermediate_without_client_auth_is_refused(
        tmp_path: Path, start_server: StartServer, ekus: list[x509.ObjectIdentifier]) -> None:
    root = foreign_ca("root")
    inter = _intermediate(root, ekus)
    server = secret_tls(_options(tmp_path, "s", root, "userd", bundle=[root[1]], via=None))
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    d = _options(tmp_path, "c", inter, "orderd", bundle=[root[1]], via=inter[1])
    raw = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(),
                                       (d / "tls.key").read_bytes(),
                                       (d / "tls.crt").read_bytes())
    err = await rpc_error(call(port, credentials=raw, options=server.channel_options("userd")))
    assert err.code() is grpc.StatusCode.UNAVAILABLE  # what every dial() call would get
    with pytest.raises(CertificateError) as info:
        secret_tls(d)
    assert "clientAuth" in str(info.value) and "intermediate" in str(info.value)
    # the intermediate in the verifier's bundle is an anchor there: fine
    d2 = _options(tmp_path, "c2", inter, "orderd", bundle=[root[1], inter[1]], via=inter[1])
    s2 = secret_tls(_options(tmp_path, "s2", root, "userd", bundle=[root[1], inter[1]],
                             via=None))
    port2 = await start_server(s2.server_credentials(), [s2.peer_interceptor()])
    client = secret_tls(d2)
    assert await call(port2, credentials=client.channel_credentials(),
                      options=client.channel_options("userd"))


async def test_a_server_chain_through_an_intermediate_without_server_auth_is_refused(
        tmp_path: Path, start_server: StartServer) -> None:
    root = foreign_ca("root")
    inter = _intermediate(root, [EKU.CLIENT_AUTH])
    d = _options(tmp_path, "s", inter, "userd", bundle=[root[1]], via=inter[1])
    server = secret_tls(d)  # fine as a client chain
    client = secret_tls(_options(tmp_path, "c", root, "orderd", bundle=[root[1]], via=None))
    raw = grpc.ssl_server_credentials(  # server_credentials() refuses it too
        [((d / "tls.key").read_bytes(), (d / "tls.crt").read_bytes())],
        root_certificates=(d / "ca.crt").read_bytes(), require_client_auth=True)
    port = await start_server(raw, [server.peer_interceptor()])
    err = await rpc_error(call(port, credentials=client.channel_credentials(),
                               options=client.channel_options("userd")))
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(CertificateError) as info:
        check_server_identity(server, "userd")
    assert "serverAuth" in str(info.value) and "intermediate" in str(info.value)
    with pytest.raises(CertificateError, match="serverAuth"):
        server.server_credentials()
    # with both purposes the chain serves
    both = _intermediate(root, [EKU.SERVER_AUTH, EKU.CLIENT_AUTH])
    ok: TLSOptions = secret_tls(_options(tmp_path, "s3", both, "userd", bundle=[root[1]],
                                         via=both[1]))
    check_server_identity(ok, "userd")
    port3 = await start_server(ok.server_credentials(), [ok.peer_interceptor()])
    assert await call(port3, credentials=client.channel_credentials(),
                      options=client.channel_options("userd"))
