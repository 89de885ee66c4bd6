"""A client (or server) whose own certificate has expired says so.

Every server refuses the handshake of a client whose certificate expired (or is not
valid yet), and the caller saw only ``UNAVAILABLE: service 'userd': all 1 endpoints are
failing or ejected``: nothing named the client's own certificate (grpc core's handshake
line is a server's, or an INFO line of the C core). The client's reloader, which holds
the certificate in force and re-reads the files every ``reload_interval_s``, now logs
``client certificate expired`` / ``client certificate not valid yet`` (warning, as an
outage: once, then reminders) until a usable renewal is taken, then
``client certificate valid again``.
"""

from __future__ import annotations

import datetime as dt

import pytest
from structlog.testing import capture_logs

from tests.auth.conftest import Pki


@pytest.mark.parametrize("shift_h", [-3.0, 2.0], ids=["expired", "not-yet-valid"])
def test_a_client_certificate_out_of_its_validity_is_logged_until_renewed(
        pki: Pki, shift_h: float) -> None:
    with capture_logs() as logs:
        client = pki.issue("orderd", ttl_h=1,
                           now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=shift_h))
        reloader = client.channel_reloader()
        assert not reloader.check(force=True)  # nothing renewed: no second warning
        pki.issue("orderd", overwrite=True)  # a valid renewal
        assert reloader.check(force=True)
        assert not reloader.check(force=True)
    lines = [(e["log_level"], e["event"]) for e in logs
             if e["event"].startswith("client certificate")]
    event = "expired" if shift_h < 0 else "not valid yet"
    assert lines == [("warning", f"client certificate {event}"),
                     ("info", "client certificate reloaded"),
                     ("info", "client certificate valid again")], lines
    warning = next(e for e in logs if e["event"] == f"client certificate {event}")
    assert str(client.cert_file) in warning["error"]
    assert "spiffe://" in warning["error"]


@pytest.mark.parametrize("shift_h", [-3.0, 2.0], ids=["expired", "not-yet-valid"])
def test_a_server_certificate_out_of_its_validity_is_logged_until_renewed(
        pki: Pki, shift_h: float) -> None:
    """The server's side: every client refuses its handshake, and the server heard of it
    only in grpc core's INFO lines; its reloader (asked before each handshake, at most
    every ``reload_interval_s``) now logs ``server certificate expired`` / ``... not
    valid yet`` until a usable renewal is taken."""
    from meshkit.auth._tls import _ServerReloader

    with capture_logs() as logs:
        pki.issue("userd", ttl_h=1, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=shift_h))
        server = pki.options("userd", reload_interval_s=1e-9)
        reloader = _ServerReloader(server)  # what server_credentials() hands grpc
        assert reloader() is None  # a handshake: nothing renewed, no second warning
        pki.issue("userd", overwrite=True)  # a valid renewal
        assert reloader() is not None
        assert reloader() is None
    lines = [(e["log_level"], e["event"]) for e in logs
             if e["event"].startswith("server certificate")]
    event = "expired" if shift_h < 0 else "not valid yet"
    assert lines[0] == ("warning", f"server certificate {event}"), lines
    assert sorted(lines[1:]) == [("info", "server certificate reloaded"),
                                 ("info", "server certificate valid again")], lines
