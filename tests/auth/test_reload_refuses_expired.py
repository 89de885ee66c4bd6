"""A renewal on disk that is already expired (or not valid yet) is skipped, not served.

A stale Secret rolled back, a backup restored, a certificate issued on a host whose clock
is off: every peer refuses such a certificate in the handshake (RFC 5280 §4.1.2.5,
§6.1.3 (a)(2)), so swapping it in for the current, valid pair would fail every new
connection. The reloaders keep the current pair and log ``certificate reload skipped`` /
``client certificate reload skipped`` naming why, as for any renewal they cannot use, and
take the files once they hold a usable pair.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl

import pytest
from cryptography import x509
from structlog.testing import capture_logs

from meshkit.auth import TLSOptions
from tests.auth.conftest import Pki, StartServer, call
from tests.support.wait import until


def _served_serial(port: int, client: TLSOptions) -> int:
    """The serial number of the certificate the server presents to a new connection
    (validity not checked here: what is served, expired or not)."""
    ctx = ssl.create_default_context(cafile=str(client.ca_file))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(client.cert_file), str(client.key_file))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock, \
            ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(tls: TLSOptions) -> int:
    return x509.load_pem_x509_certificate(tls.cert_file.read_bytes()).serial_number


@pytest.mark.parametrize("shift_h", [-3.0, 2.0], ids=["expired", "not-yet-valid"])
async def test_server_keeps_its_valid_certificate_over_an_unusable_renewal(
        pki: Pki, start_server: StartServer, shift_h: float) -> None:
    server = pki.issue("userd")  # reload_interval_s=0.05
    client = pki.issue("orderd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    valid = _serial(server)
    assert await asyncio.to_thread(_served_serial, port, client) == valid
    with capture_logs() as logs:
        # the files now hold a consistent pair from the mesh CA, valid 1 h from now+shift
        pki.issue("userd", ttl_h=1, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=shift_h),
                  overwrite=True)
        unusable = _serial(server)
        await asyncio.sleep(0.3)  # several reload intervals
        for _ in range(3):  # new connections, each a handshake that may reload
            assert await asyncio.to_thread(_served_serial, port, client) == valid
            assert await call(port, credentials=client.channel_credentials(),
                              options=client.channel_options("userd"))
            await asyncio.sleep(0.1)
    skipped = [e for e in logs if e["event"] == "certificate reload skipped"]
    assert skipped, [e["event"] for e in logs]
    assert ("expired" if shift_h < 0 else "not valid") in skipped[0]["error"]
    assert not any(e["event"] == "server certificate reloaded" for e in logs)
    # a usable renewal is then taken as usual
    pki.issue("userd", overwrite=True)
    renewed = _serial(server)
    assert renewed not in (valid, unusable)

    async def serving_renewed() -> bool:
        return await asyncio.to_thread(_served_serial, port, client) == renewed

    await until(serving_renewed, timeout_s=10, what="the usable renewal served")


@pytest.mark.parametrize("shift_h", [-3.0, 2.0], ids=["expired", "not-yet-valid"])
def test_channel_reloader_keeps_its_valid_certificate_over_an_unusable_renewal(
        pki: Pki, shift_h: float) -> None:
    client = pki.issue("orderd")
    reloader = client.channel_reloader()
    creds = reloader.credentials
    with capture_logs() as logs:
        pki.issue("orderd", ttl_h=1,
                  now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=shift_h), overwrite=True)
        assert reloader.check(force=True) is False
    assert reloader.credentials is creds and reloader.generation == 1
    assert [e["event"] for e in logs] == ["client certificate reload skipped"]
    assert ("expired" if shift_h < 0 else "not valid") in logs[0]["error"]
    pki.issue("orderd", overwrite=True)
    assert reloader.check(force=True) is True and reloader.generation == 2
