"""``TLSOptions.server_credentials()`` (for plain grpc.aio servers) refuses a certificate
whose extended key usage lacks serverAuth, as ``serve()``'s start check does (1d8ed7f).

RFC 5280 §4.2.1.12 / grpc's BoringSSL: every client refuses such a server certificate
(``unsupported certificate purpose``), so a plain server built on these credentials
started, and failed every call ``UNAVAILABLE`` (shown on a real server): the same
certificate the server's reload refuses to swap in was taken at start.
"""

from __future__ import annotations

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

from meshkit.auth import CertificateError
from tests.auth.conftest import Pki, StartServer, call, rpc_error
from tests.auth.test_extended_key_usage import _write_leaf

pytestmark = pytest.mark.timeout(60)


async def test_server_credentials_refuse_a_certificate_without_server_auth(
        pki: Pki, start_server: StartServer) -> None:
    client = pki.issue("orderd")
    _write_leaf(pki, "userd", [EKU.CLIENT_AUTH])
    server = pki.options("userd")  # fine as a client certificate
    raw = grpc.ssl_server_credentials(
        [((pki.dir / "userd.key").read_bytes(), (pki.dir / "userd.pem").read_bytes())],
        root_certificates=(pki.dir / "ca.pem").read_bytes(), require_client_auth=True)
    port = await start_server(raw, [server.peer_interceptor()])
    err = await rpc_error(call(port, credentials=client.channel_credentials(),
                               options=client.channel_options("userd")))
    assert err.code() is grpc.StatusCode.UNAVAILABLE  # what the server would get
    with pytest.raises(CertificateError, match="serverAuth"):
        server.server_credentials()
    for ekus in (None, [EKU.SERVER_AUTH, EKU.CLIENT_AUTH]):
        _write_leaf(pki, "userd", ekus)
        ok = pki.options("userd")
        port = await start_server(ok.server_credentials(), [ok.peer_interceptor()])
        assert await call(port, credentials=client.channel_credentials(),
                          options=client.channel_options("userd"))
