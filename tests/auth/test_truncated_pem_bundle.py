"""A PEM file whose last certificate is cut short is refused, not read as the ones before.

``cryptography``'s ``load_pem_x509_certificates`` skips a last block that has no complete
``-----END CERTIFICATE-----`` line: a CA bundle being rewritten in place (a rotation's
``cat new.pem old.pem > ca.pem``, a copy over it) read half-way was taken as its first
CA alone, so servers refused every peer the other CA vouches for until the next reload;
a bundle whose last line was lost in a hand edit silently trusted one CA less. Such a
file is now an unreadable one: refused at construction, skipped by the reloaders (the
bundle in force kept).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshkit.auth import CertificateError, PeerVerifier, TLSOptions, create_ca
from meshkit.auth._certs import load_certificates
from meshkit.auth.cli import main as certs_main
from tests.auth.conftest import TD, Pki


def _pem_of_new_ca() -> bytes:
    _key, cert = create_ca(trust_domain=TD, ttl_days=2)
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("cut", [2, 20, 300])
def test_a_bundle_whose_last_certificate_is_cut_short_is_refused(
        pki: Pki, tmp_path: Path, cut: int, capsys: pytest.CaptureFixture[str]) -> None:
    old = (pki.dir / "ca.pem").read_bytes()
    damaged = tmp_path / "bundle.pem"
    damaged.write_bytes(old + _pem_of_new_ca()[:-cut])
    with pytest.raises(CertificateError, match="damaged or truncated"):
        load_certificates(damaged)
    assert certs_main(["certs", "inspect", str(damaged)]) == 1
    assert "damaged or truncated" in capsys.readouterr().err
    pki.issue("orderd")
    (pki.dir / "ca.pem").write_bytes(damaged.read_bytes())
    with pytest.raises(CertificateError, match="damaged or truncated"):
        pki.options("orderd")
    # whole again: read as before
    (pki.dir / "ca.pem").write_bytes(old + b"\n")
    assert len(load_certificates(pki.dir / "ca.pem")) == 1
    assert isinstance(pki.options("orderd"), TLSOptions)


def test_the_peer_verifier_keeps_its_bundle_over_a_half_written_one(pki: Pki) -> None:
    orderd = pki.issue("orderd")
    now = [time.time()]
    verifier = PeerVerifier.from_file(pki.dir / "ca.pem", reload_interval_s=1.0,
                                      clock=lambda: now[0])
    context = {"x509_pem_cert": [orderd.cert_file.read_bytes()]}
    peer = verifier.identify(context)
    assert peer is not None and peer.service == "orderd"
    # a rotation writes the new CA first, then the old one: read half-way through
    old = (pki.dir / "ca.pem").read_bytes()
    (pki.dir / "ca.pem").write_bytes(_pem_of_new_ca() + old[:-30])
    now[0] += 2.0
    peer = verifier.identify(context)
    assert peer is not None and peer.service == "orderd"  # was None: the new CA alone
    # the whole file is then taken
    (pki.dir / "ca.pem").write_bytes(_pem_of_new_ca() + old)
    now[0] += 2.0
    assert verifier.identify(context) is not None


def test_the_channel_reloader_keeps_its_bundle_over_a_half_written_one(pki: Pki) -> None:
    orderd = pki.issue("orderd")
    reloader = orderd.channel_reloader()
    old = (pki.dir / "ca.pem").read_bytes()
    new_ca = _pem_of_new_ca()
    (pki.dir / "ca.pem").write_bytes(old + new_ca)
    assert reloader.check(force=True)  # both CAs trusted
    generation = reloader.generation
    # rewritten in place with the same CAs, read before its last line was written
    (pki.dir / "ca.pem").write_bytes(old + new_ca[:-10])
    assert not reloader.check(force=True)  # was taken: the new CA dropped from the roots
    assert reloader.generation == generation


def test_the_skipped_bundle_reload_says_why(pki: Pki) -> None:
    """``CA bundle reload skipped`` gave the error's type alone (``CertificateError``),
    so neither a truncated bundle nor an empty one was told apart (nor logged again when
    one became the other); it now gives the reason (never the file's content)."""
    from structlog.testing import capture_logs

    orderd = pki.issue("orderd")
    now = [time.time()]
    verifier = PeerVerifier.from_file(pki.dir / "ca.pem", reload_interval_s=1.0,
                                      clock=lambda: now[0])
    context = {"x509_pem_cert": [orderd.cert_file.read_bytes()]}
    old = (pki.dir / "ca.pem").read_bytes()
    with capture_logs() as logs:
        (pki.dir / "ca.pem").write_bytes(old + _pem_of_new_ca()[:-30])
        now[0] += 2.0
        assert verifier.identify(context) is not None
        (pki.dir / "ca.pem").write_bytes(b"")
        now[0] += 2.0
        assert verifier.identify(context) is not None
    errors = [e["error"] for e in logs if e["event"] == "CA bundle reload skipped"]
    assert len(errors) == 2, logs
    assert "damaged or truncated" in errors[0] and "BEGIN" not in errors[0]
    assert "empty" in errors[1]


@pytest.mark.parametrize("kept", [5, 6, 10, 16])
def test_a_bundle_ending_inside_a_begin_line_is_refused(
        pki: Pki, tmp_path: Path, kept: int) -> None:
    """Cut within the next certificate's ``-----BEGIN CERTIFICATE-----`` line (before
    or just after ``-----BEGIN ``), the file holds no BEGIN of that block to look for
    an END after: it is refused all the same (review of 1c7b36c: no test reached it)."""
    old = (pki.dir / "ca.pem").read_bytes()
    damaged = tmp_path / "bundle.pem"
    damaged.write_bytes(old + _pem_of_new_ca()[:kept])
    with pytest.raises(CertificateError, match="damaged or truncated"):
        load_certificates(damaged)


@pytest.mark.parametrize("tail", [b"---\n", b"---", b"--\n\n"])
def test_a_bundle_ending_with_a_separator_line_is_read(pki: Pki, tmp_path: Path,
                                                        tail: bytes) -> None:
    """``openssl s_client -showcerts`` output saved as a bundle ends with its ``---``
    separator line, which cryptography reads past: taken for a cut ``-----BEGIN``
    line (1c7b36c), such a bundle, read before, was refused as "damaged or truncated".
    A line of fewer than five dashes is no BEGIN line cut short (one cut that early
    reads as the certificates before it, as a file cut between two blocks does)."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"Certificate chain\n 0 s:CN = mesh\n" + (pki.dir / "ca.pem").read_bytes()
                       + tail)
    assert len(load_certificates(bundle)) == 1
