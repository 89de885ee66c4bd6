"""Mesh CA and workload certificates, and the ``meshkit certs`` CLI."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.auth import (
    CertificateError,
    KeyExistsError,
    create_ca,
    describe_certificate,
    init_ca_dir,
    issue_into_dir,
    issue_workload,
    load_certificate,
)
from meshkit.auth.cli import main
from meshkit.errors import ConfigError
from tests.auth.chains import (
    ca_with_duplicate_extension,
    foreign_ca,
    leaf_with_malformed_ip_san,
    pem,
)
from tests.auth.conftest import TD, Pki


def test_ca_is_name_constrained_p256(pki: Pki) -> None:
    """The CA is an ECDSA P-256 CA:TRUE root permitting only its trust domain's names."""
    ca = load_certificate(pki.dir / "ca.pem")
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = {str(s.value) for s in nc.value.permitted_subtrees or ()}
    assert permitted == {TD, f"svc.{TD}", "localhost"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_workload_cert_is_an_x509_svid(pki: Pki) -> None:
    """A workload cert has one SPIFFE URI, the identity name, the listen SANs, CA:FALSE."""
    pki.issue("orderd")
    info = describe_certificate(load_certificate(pki.dir / "orderd.pem"))
    assert info.spiffe_id == f"spiffe://{TD}/svc/orderd"
    assert info.uris == (info.spiffe_id,)
    assert info.dns_names == (f"orderd.svc.{TD}", "localhost")
    assert info.ip_addresses == ("127.0.0.1",) and not info.is_ca
    assert (info.not_after - info.not_before).total_seconds() == pytest.approx(3900, abs=2)


def test_keys_are_0600_and_never_overwritten_silently(pki: Pki) -> None:
    """Keys are written 0600; issuing again without overwrite is refused."""
    pki.issue("orderd")
    for f in ("ca.key", "orderd.key"):
        assert os.stat(pki.dir / f).st_mode & 0o777 == 0o600
    before = (pki.dir / "orderd.key").read_bytes()
    with pytest.raises(KeyExistsError):
        issue_into_dir(pki.dir, "orderd")
    with pytest.raises(KeyExistsError):
        init_ca_dir(pki.dir, trust_domain=TD)
    assert (pki.dir / "orderd.key").read_bytes() == before
    pki.issue("orderd", overwrite=True)
    assert (pki.dir / "orderd.key").read_bytes() != before
    assert os.stat(pki.dir / "orderd.key").st_mode & 0o777 == 0o600


def test_names_outside_constraints_refused_at_issue(pki: Pki) -> None:
    """A DNS SAN the CA may not certify is refused when issuing, not at the handshake."""
    with pytest.raises(ConfigError, match="outside"):
        issue_into_dir(pki.dir, "orderd", dns=("evil.example.com",))
    with pytest.raises(ConfigError, match="outlive"):
        issue_into_dir(pki.dir, "orderd", ttl_h=24 * 10)


@pytest.mark.parametrize("ttl_h", ["1e9"])
def test_cli_issue_refuses_a_ttl_past_the_ca_or_year_9999(
        pki: Pki, capsys: pytest.CaptureFixture[str], ttl_h: str) -> None:
    """`meshkit certs issue --ttl-h 1e9` is a one-line error, exit 1, not an
    OverflowError traceback (RFC 5280 §4.1.2.5: notAfter ends at the year 9999); nothing
    is written. (inf, nan, 0 and -1 are usage errors, exit 2:
    tests/cli/test_certs_durations.py.)"""
    assert main(["certs", "issue", "orderd", "--dir", str(pki.dir), "--ttl-h", ttl_h]) == 1
    err = capsys.readouterr().err
    assert "ttl_h" in err and repr(float(ttl_h)) in err and "Traceback" not in err
    assert not (pki.dir / "orderd.pem").exists()


@pytest.mark.parametrize("ttl_days", ["1e7"])
def test_cli_init_refuses_a_ttl_past_year_9999(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ttl_days: str) -> None:
    """`meshkit certs init --ttl-days 1e7` is a one-line error, exit 1 (a ConfigError from
    create_ca), and writes no CA."""
    d = tmp_path / "pki"
    assert main(["certs", "init", "--dir", str(d), "--trust-domain", TD,
                 "--ttl-days", ttl_days]) == 1
    err = capsys.readouterr().err
    assert "ttl_days" in err and repr(float(ttl_days)) in err
    assert not (d / "ca.pem").exists() and not (d / "ca.key").exists()


@pytest.mark.parametrize("extra", [
    f"userd.svc.{TD}", f"*.svc.{TD}", f"svc.{TD}", f"USERD.Svc.{TD}.", f"a.userd.svc.{TD}",
    f"*.orderd.svc.{TD}",
])
def test_issue_refuses_another_workloads_identity_name(pki: Pki, extra: str) -> None:
    """Clients verify a server's identity as the TLS host name <service>.svc.<td>, so the
    issuer keeps that namespace to the one workload it names: an extra DNS name equal to
    or under svc.<td> other than the workload's own (userd.svc.<td> or *.svc.<td> for
    orderd would let orderd pass as userd) is refused, quoted; the own name is allowed."""
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=("localhost", extra),
                       ips=("127.0.0.1",))
    assert repr(extra.lower().rstrip(".")) in str(info.value)
    assert not (pki.dir / "orderd.pem").exists() and not (pki.dir / "orderd.key").exists()
    issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=(f"orderd.svc.{TD}", "localhost"))
    info2 = describe_certificate(load_certificate(pki.dir / "orderd.pem"))
    assert info2.dns_names == (f"orderd.svc.{TD}", "localhost")


def test_cli_issue_refuses_another_workloads_identity_name(
        pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    """`meshkit certs issue orderd --dns userd.svc.<td>` exits 1 naming the refused name."""
    assert main(["certs", "issue", "orderd", "--dir", str(pki.dir), "--dns",
                 f"userd.svc.{TD}"]) == 1
    assert f"userd.svc.{TD}" in capsys.readouterr().err
    assert not (pki.dir / "orderd.pem").exists()


def test_cli_init_issue_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """certs init/issue/inspect create files and print subject, SPIFFE ID and fingerprint."""
    d = str(tmp_path / "c")
    assert main(["certs", "init", "--dir", d, "--trust-domain", TD, "--ttl-days", "3"]) == 0
    assert main(["issue", "userd", "--dir", d, "--ttl-h", "2", "--dns", "localhost",
                 "--ip", "127.0.0.1"]) == 0
    capsys.readouterr()
    assert main(["inspect", f"{d}/userd.pem"]) == 0
    out = capsys.readouterr().out
    for needle in (f"spiffe://{TD}/svc/userd", "userd.svc.", "127.0.0.1", "sha256:",
                   "not after:", "issuer:        CN=meshkit CA meshkit.test"):
        assert needle in out
    assert "PRIVATE" not in out
    assert main(["issue", "userd", "--dir", d]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["issue", "userd", "--dir", d, "--force"]) == 0
    assert "renewed" in capsys.readouterr().out
    assert main(["issue", "Bad_Name", "--dir", d]) == 1
    assert main(["bogus"]) == 2


def test_ca_is_pathlen_zero_and_constrained_with_own_functions() -> None:
    """create_ca always makes CA:TRUE with pathlen:0, keyCertSign and critical name
    constraints, whatever the extra permitted names."""
    from meshkit.auth import create_ca

    _key, ca = create_ca(trust_domain=TD, ttl_days=1, permitted_dns=("localhost", "example.org"),
                         permitted_ips=("10.0.0.0/8",))
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and not ku.digital_signature
    nc = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = {str(s.value) for s in nc.value.permitted_subtrees or ()}
    assert {TD, f"svc.{TD}", "localhost", "example.org", "10.0.0.0/8"} <= permitted


def test_cli_issue_never_makes_a_ca(tmp_path: Path) -> None:
    """`meshkit certs issue` writes a CA:FALSE leaf without keyCertSign, whatever it is
    given."""
    d = str(tmp_path / "c")
    assert main(["certs", "init", "--dir", d, "--trust-domain", TD]) == 0
    assert main(["certs", "issue", "orderd", "--dir", d, "--dns", "localhost"]) == 0
    cert = load_certificate(Path(d) / "orderd.pem")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False and bc.value.path_length is None
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    assert not describe_certificate(cert).is_ca


def test_issue_refuses_an_issuer_that_is_not_the_ca(pki: Pki) -> None:
    """Issuing with a workload certificate (or a key that is not the CA's) in place of the
    CA is refused: it would mint certificates no peer accepts."""
    from meshkit.auth import issue_workload, load_private_key

    pki.issue("userd")
    leaf_cert = load_certificate(pki.dir / "userd.pem")
    leaf_key = load_private_key(pki.dir / "userd.key")
    ca_cert = load_certificate(pki.dir / "ca.pem")
    with pytest.raises(ConfigError, match="not a CA"):
        issue_workload(leaf_key, leaf_cert, "orderd", ttl_h=0.5)
    with pytest.raises(ConfigError, match="does not match"):
        issue_workload(leaf_key, ca_cert, "orderd", ttl_h=0.5)


def test_cli_init_does_not_replace_an_existing_ca_certificate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A host holding the trust bundle ``ca.pem`` without ``ca.key`` (the CA key kept
    offline) is the normal deployment: ``certs init`` without ``--force`` refuses (exit 1,
    one line) and leaves ``ca.pem`` as it was; ``--force`` replaces it."""
    secure, host = tmp_path / "secure", tmp_path / "host"
    assert main(["certs", "init", "--dir", str(secure), "--trust-domain", TD]) == 0
    host.mkdir()
    (host / "ca.pem").write_bytes((secure / "ca.pem").read_bytes())
    before = (host / "ca.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "init", "--dir", str(host), "--trust-domain", TD]) == 1
    assert (host / "ca.pem").read_bytes() == before
    assert not (host / "ca.key").exists()
    err = capsys.readouterr().err
    assert "ca.pem exists; refusing to overwrite" in err and len(err.splitlines()) == 1
    assert main(["certs", "init", "--dir", str(host), "--trust-domain", TD, "--force"]) == 0
    assert (host / "ca.pem").read_bytes() != before and (host / "ca.key").exists()


def test_cli_issue_does_not_replace_an_existing_certificate_without_its_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``certs issue <svc>`` without ``--force`` refuses when ``<svc>.pem`` exists, even
    with ``<svc>.key`` missing, and writes neither file; ``--force`` replaces it."""
    d = tmp_path / "c"
    assert main(["certs", "init", "--dir", str(d), "--trust-domain", TD]) == 0
    assert main(["certs", "issue", "orderd", "--dir", str(d)]) == 0
    (d / "orderd.key").unlink()
    before = (d / "orderd.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "issue", "orderd", "--dir", str(d)]) == 1
    assert "orderd.pem exists; refusing to overwrite" in capsys.readouterr().err
    assert (d / "orderd.pem").read_bytes() == before and not (d / "orderd.key").exists()
    with pytest.raises(KeyExistsError):
        issue_into_dir(d, "orderd")
    assert main(["certs", "issue", "orderd", "--dir", str(d), "--force"]) == 0
    assert (d / "orderd.pem").read_bytes() != before and (d / "orderd.key").exists()


def test_the_readme_deployment_commands_run_as_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Certificates for a real deployment" block, each line run as written
    (``/etc/meshkit`` a temporary directory): its ``issue --dns orderd.internal`` was
    refused, the CA ``certs init`` made there permitting only ``svc.prod.example`` and
    ``localhost``, and ``inspect`` found no certificate."""
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("**Certificates for a real deployment.**", 1)[1]
    block = block.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    commands = [shlex.split(ln.replace("/etc/meshkit", str(tmp_path))) for ln in lines if ln]
    assert [c[:3] for c in commands] == [["meshkit", "certs", "init"],
                                        ["meshkit", "certs", "issue"],
                                        ["meshkit", "certs", "inspect"]]
    for command in commands:
        assert main(command[1:]) == 0, command
    shown = capsys.readouterr().out
    assert "orderd.internal" in shown and "10.0.0.7" in shown


@pytest.mark.parametrize("case", ["one_byte_ip_san", "duplicate_extension"])
def test_cli_inspect_reports_a_malformed_certificate_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    """`meshkit certs inspect` on a certificate with malformed extensions (a one-byte
    iPAddress SAN, RFC 5280 §4.2.1.6 wants 4 or 16; a subjectAltName twice, §4.2) died with
    a Python traceback (cryptography's ValueError / DuplicateExtension escaped
    describe_certificate and the CLI's error handling). The CLI documents "1 refused or
    failed (message on stderr)", one line: it now exits 1 with one line naming the file
    and the malformed extensions; describe_certificate raises CertificateError."""
    cert = (leaf_with_malformed_ip_san(foreign_ca("root")) if case == "one_byte_ip_san"
            else ca_with_duplicate_extension("odd CA")[1])
    path = tmp_path / "tls.crt"
    path.write_bytes(pem(foreign_ca("fine")[1], cert))
    assert main(["certs", "inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshkit certs inspect:") and err.count("\n") == 1, err
    assert str(path) in err and "malformed" in err and "certificate 2 of 2" in err, err
    with pytest.raises(CertificateError, match="malformed"):
        describe_certificate(cert)


def test_a_naive_now_is_read_as_utc_everywhere(tmp_path: Path) -> None:
    """A user pins issue times with a naive UTC ``datetime`` (``datetime(2030, 1, 1,
    12)``, ``datetime.utcnow()``). Before: ``create_ca(now=naive)`` took it as UTC (as
    cryptography's builder does), but ``issue_workload(..., now=naive)`` and
    ``issue_into_dir`` raised a bare ``TypeError: can't compare offset-naive and
    offset-aware datetimes`` from the "would outlive the CA" check. Now a naive ``now``
    is UTC for all of them (documented), an aware one in another zone is its instant,
    and a ``now`` that is no ``datetime`` is a ConfigError naming ``now``."""
    naive = dt.datetime(2030, 1, 1, 12, 0)  # naive: the point of the test
    expected = dt.datetime(2030, 1, 1, 11, 55, tzinfo=dt.UTC)  # 5 minutes backdated
    key, ca = create_ca(trust_domain=TD, now=naive)
    assert ca.not_valid_before_utc == expected
    _, cert = issue_workload(key, ca, "orderd", now=naive)
    assert cert.not_valid_before_utc == expected
    tokyo = dt.timezone(dt.timedelta(hours=9))
    _, cert = issue_workload(key, ca, "orderd", now=dt.datetime(2030, 1, 1, 21, tzinfo=tokyo))
    assert cert.not_valid_before_utc == expected
    init_ca_dir(tmp_path, trust_domain=TD, now=naive)
    files = issue_into_dir(tmp_path, "orderd", now=naive)
    assert load_certificate(files.cert_file).not_valid_before_utc == expected
    for bad in (1_893_499_200.0, "2030-01-01T12:00:00Z", dt.date(2030, 1, 1)):
        with pytest.raises(ConfigError, match=r"^now must be a datetime") as err:
            issue_workload(key, ca, "orderd", now=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(err.value)
        with pytest.raises(ConfigError, match=r"^now must be a datetime"):
            create_ca(trust_domain=TD, now=bad)  # type: ignore[arg-type]
