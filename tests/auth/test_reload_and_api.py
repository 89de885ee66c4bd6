"""Certificate reload decisions with a fake clock, the chain order, and the public surface."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

import meshkit.auth as auth
from meshkit.auth import (
    AuthOptions,
    AuthzInterceptor,
    AuthzPolicy,
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    PeerIdentityInterceptor,
    PeerVerifier,
    TLSMaterial,
    TLSOptions,
    VerifierOptions,
    issue_workload,
    load_certificate,
    load_private_key,
    write_private_key,
)
from meshkit.auth._tls import _ServerReloader
from meshkit.errors import ConfigError
from tests.auth.conftest import AUDIENCE, ISSUER, Pki


class Tick:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_server_reloader_rate_limit_and_mid_renewal(pki: Pki) -> None:
    """The fetcher re-reads at most every reload_interval_s and skips a half-written renewal."""
    pki.issue("userd")
    tick = Tick()
    tls = pki.options("userd", reload_interval_s=5.0, clock=tick)
    reloader = _ServerReloader(tls)
    assert reloader() is None
    # Half a renewal: a new key without its certificate.
    ca_key = load_private_key(pki.dir / "ca.key")
    new_key, new_cert = issue_workload(ca_key, load_certificate(pki.dir / "ca.pem"), "userd")
    write_private_key(tls.key_file, new_key, overwrite=True)
    tick.now += 1
    assert reloader() is None  # not due yet
    tick.now += 5
    assert reloader() is None and reloader.reloads == 0  # key and cert disagree: keep serving
    tls.cert_file.write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
    tick.now += 5
    assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
    tick.now += 5
    assert reloader() is None and reloader.reloads == 1


def test_server_reloader_reports_each_reload_to_its_hook(pki: Pki) -> None:
    """on_reload gets the renewed material once per reload; a failing hook is logged and
    the renewed certificate is still served."""
    pki.issue("userd")
    tick = Tick()
    tls = pki.options("userd", reload_interval_s=1.0, clock=tick)
    seen: list[TLSMaterial] = []
    reloader = _ServerReloader(tls, seen.append)
    ca_key = load_private_key(pki.dir / "ca.key")
    ca = load_certificate(pki.dir / "ca.pem")
    for round_ in (1, 2):
        new_key, new_cert = issue_workload(ca_key, ca, "userd", ttl_h=round_)
        write_private_key(tls.key_file, new_key, overwrite=True)
        tls.cert_file.write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
        tick.now += 2
        assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
        assert len(seen) == round_
        assert seen[-1].not_after == new_cert.not_valid_after_utc.timestamp()

    def broken(_: TLSMaterial) -> None:
        raise RuntimeError("hook bug")

    failing = _ServerReloader(tls, broken)
    new_key, new_cert = issue_workload(ca_key, ca, "userd")
    write_private_key(tls.key_file, new_key, overwrite=True)
    tls.cert_file.write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
    tick.now += 2
    assert isinstance(failing(), grpc.ServerCertificateConfiguration)


def test_auth_options_chain_order(pki: Pki) -> None:
    """AuthOptions gives peer authn, then JWT authn, then authz; nothing without TLS when
    only the peer check is asked for; nothing to check at all (as documented) and jwt
    without a verifier are refused."""
    tls: TLSOptions = pki.issue("userd")
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), KeySet.generate())
    chain = AuthOptions(verifier=verifier, policy=AuthzPolicy()).interceptors(tls)
    assert [type(i) for i in chain] == [PeerIdentityInterceptor, JWTAuthInterceptor,
                                        AuthzInterceptor]
    assert AuthOptions().interceptors(None) == ()
    with pytest.raises(ConfigError, match="nothing to check"):
        AuthOptions(check_peers=False)
    with pytest.raises(ConfigError, match="verifier"):
        AuthOptions(jwt=JWTAuthOptions())


def test_a_peer_check_alone_on_a_server_without_tls_is_refused_when_built(
    pki: Pki,
) -> None:
    """An operator serves mTLS through ``ServeOptions(credentials=<mTLS credentials>)``
    (the documented alternative to ``tls``) and asks for the peer check,
    ``auth=AuthOptions()`` (``check_peers=True``). The peer check needs ``tls`` (trust
    domain, allowed peers; credentials are opaque), so it was left out and the chain held
    no check at all: a CA-signed client certificate that is no workload was served ``OK``,
    where the same server with ``tls=`` refuses it ``UNAUTHENTICATED``. A security option
    accepted and then ignored; now a ``ConfigError`` when the server is built (also with
    ``insecure=True``), and a warning when a verifier or policy keeps the chain non-empty."""
    import structlog

    import meshkit
    from meshkit.server import server_chain

    tls: TLSOptions = pki.issue("userd")
    for transport in ({"credentials": tls.server_credentials()}, {"insecure": True}):
        options = meshkit.ServeOptions(auth=AuthOptions(), **transport)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="checks peers only with"):
            meshkit.MeshServer("userd", [], options=options)
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), KeySet.generate())
    with structlog.testing.capture_logs() as logs:
        chain = server_chain("userd", meshkit.ServeOptions(
            credentials=tls.server_credentials(), auth=AuthOptions(verifier=verifier)))
    assert any(type(i) is JWTAuthInterceptor for i in chain)
    assert any("peer check" in e["event"] and e["log_level"] == "warning" for e in logs), logs


def test_public_names_exist_and_are_documented() -> None:
    """Every name in meshkit.auth.__all__ exists and public classes/functions have docstrings."""
    assert auth.__doc__ and "authn" in auth.__doc__
    for name in auth.__all__:
        obj = getattr(auth, name)
        if callable(obj):
            assert obj.__doc__, name


# -- broken files for a long time: one warning, a reminder a minute, one recovery line ------

def _lines(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["log_level"], e["event"]) for e in logs]


def test_server_reloader_logs_broken_files_once_with_reminders_and_recovery(pki: Pki) -> None:
    """A server's certificate files stay broken for long (a bad CA bundle, then a bad key),
    then are repaired. Before: "certificate reload skipped" at every reload interval
    (1,440 an hour with the CA poll at 5 s) and no line when repaired. Now: a warning when
    it starts and when the error changes, a reminder at most every 60 s with how long and
    how many reads failed, and "certificate files readable again" (info) once; the
    current configuration is kept throughout."""
    pki.issue("userd")
    tick = Tick()
    tls = pki.options("userd", reload_interval_s=5.0, clock=tick)
    reloader = _ServerReloader(tls)
    ca, key = tls.ca_file.read_bytes(), tls.key_file.read_bytes()
    with capture_logs() as logs:
        tls.ca_file.write_bytes(b"not a certificate\n")
        for _ in range(12):  # t = 5 .. 60
            tick.now += 5
            assert reloader() is None
        assert _lines(logs) == [("warning", "certificate reload skipped")]
        tick.now += 5  # t = 65: a minute after the first warning
        assert reloader() is None
        assert _lines(logs)[1:] == [("warning", "certificate reload skipped")]
        assert logs[1]["failing_for_s"] == 60.0 and logs[1]["failures"] == 13
        tls.ca_file.write_bytes(ca)
        tls.key_file.write_bytes(b"not a key\n")  # another error: said at once
        tick.now += 5
        assert reloader() is None
        assert len(logs) == 3 and logs[2]["error"] != logs[0]["error"]
        tls.key_file.write_bytes(key)
        for _ in range(3):
            tick.now += 5
            assert reloader() is None  # the same pair as before: nothing to swap
    assert _lines(logs)[3:] == [("info", "certificate files readable again")]
    assert logs[3]["failures"] == 14 and logs[3]["outage_s"] == 70.0
    assert reloader.reloads == 0


def test_channel_reloader_logs_broken_files_once_with_reminders_and_recovery(
        pki: Pki) -> None:
    """A client's (``dial()``'s) certificate files stay broken for long, then are put back.
    Before: "client certificate reload skipped" at every reload interval (720 an hour per
    dial() at 5 s), nothing when fixed. Now: one warning, a reminder at most every 60 s,
    one "certificate files readable again"; the credentials and generation stay."""
    pki.issue("orderd")
    tick = Tick()
    tls = pki.options("orderd", reload_interval_s=5.0, clock=tick)
    reloader = tls.channel_reloader()
    creds = reloader.credentials
    cert = tls.cert_file.read_bytes()
    with capture_logs() as logs:
        tls.cert_file.write_bytes(b"not a certificate\n")
        for _ in range(25):  # t = 5 .. 125
            tick.now += 5
            assert reloader.check() is False
        tls.cert_file.write_bytes(cert)
        tick.now += 5
        assert reloader.check() is False
        tick.now += 5
        assert reloader.check() is False
    assert _lines(logs) == [("warning", "client certificate reload skipped")] * 3 + [
        ("info", "certificate files readable again")]
    assert [e.get("failures") for e in logs] == [1, 13, 25, 25]
    assert reloader.credentials is creds and reloader.generation == 1


def test_peer_verifier_logs_a_broken_ca_bundle_once_with_reminders_and_recovery(
        pki: Pki, tmp_path: Path) -> None:
    """A server's CA bundle is replaced by a broken file for long, then the original file
    is moved back (same inode and mtime as the bundle in force). Before: "CA bundle reload
    skipped" at every reload interval, nothing when fixed. Now: one warning, a reminder at
    most every 60 s, one "CA bundle readable again"; peers are verified against the bundle
    in force throughout."""
    tls = pki.issue("orderd")
    tick = Tick()
    tick.now = float(int(time.time()))  # the verifier's clock is the wall clock
    start = tick.now
    ca = tmp_path / "ca.pem"
    shutil.copy(tls.ca_file, ca)
    verifier = PeerVerifier.from_file(ca, reload_interval_s=5.0, clock=tick)
    peer = {"x509_pem_cert": [tls.cert_file.read_bytes()]}
    assert verifier.identify(peer) is not None
    with capture_logs() as logs:
        os.rename(ca, tmp_path / "saved.pem")
        ca.write_bytes(b"not a certificate\n")
        for _ in range(13):  # t = 5 .. 65
            tick.now += 5
            assert verifier.identify(peer) is not None
        os.replace(tmp_path / "saved.pem", ca)  # the very file in force
        tick.now += 5
        assert verifier.identify(peer) is not None
    assert _lines(logs) == [("warning", "CA bundle reload skipped")] * 2 + [
        ("info", "CA bundle readable again")]
    assert tick.now - start == 70
    assert logs[1]["failures"] == 13 and logs[2]["outage_s"] == 65.0
