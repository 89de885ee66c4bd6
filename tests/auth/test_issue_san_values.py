"""The issuer refuses DNS and IP SAN values no certificate may carry, quoting them.

RFC 5280 §4.2.1.6: a dNSName is in the "preferred name syntax" of RFC 1034 §3.5 as
modified by RFC 1123 §2.1 (letters, digits and hyphens in non-empty labels; a wildcard
only as the whole leftmost label, RFC 6125 §6.4.3), an IA5String (ASCII: an IDN goes in
as its A-label); an iPAddress is 4 or 16 octets, with no room for an IPv6 zone.
"""

from __future__ import annotations

import pytest

from meshkit.auth import describe_certificate, issue_into_dir, load_certificate
from meshkit.auth.cli import main
from meshkit.errors import ConfigError
from tests.auth.conftest import Pki

BAD_DNS = [
    "é.localhost",           # not ASCII: cryptography raised ValueError (a traceback)
    "foo bar.localhost",     # a space
    "x..localhost",          # an empty label
    "*.*.localhost",         # a wildcard past the leftmost label
    "a*b.localhost",         # a partial-label wildcard
    "-x.localhost",          # a label starting with a hyphen
    "x-.localhost",          # ... or ending with one
    "x_y.localhost",         # an underscore
    f"{'a' * 64}.localhost",  # a label over 63 characters
]


@pytest.mark.parametrize("name", BAD_DNS)
def test_issue_refuses_a_dns_name_no_certificate_may_carry(pki: Pki, name: str) -> None:
    """issue_into_dir raises ConfigError quoting the name, and writes nothing."""
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=("localhost", name))
    assert repr(name) in str(info.value)
    assert not (pki.dir / "orderd.pem").exists() and not (pki.dir / "orderd.key").exists()


@pytest.mark.parametrize("name", BAD_DNS)
def test_cli_issue_refuses_a_dns_name_no_certificate_may_carry(
        pki: Pki, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """`meshkit certs issue orderd --dns <bad>` is a one-line error quoting the name,
    exit 1 (not a traceback, not a certificate carrying it)."""
    assert main(["certs", "issue", "orderd", "--dir", str(pki.dir), f"--dns={name}"]) == 1
    err = capsys.readouterr().err
    assert repr(name) in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (pki.dir / "orderd.pem").exists()


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST.", "*.localhost", "a-1.b.localhost",
                                  "xn--bcher-kva.localhost"])
def test_issue_takes_valid_dns_names(pki: Pki, name: str) -> None:
    """Host names, a leftmost wildcard and an A-label are written (lower-case, no
    trailing dot)."""
    issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=(name,))
    info = describe_certificate(load_certificate(pki.dir / "orderd.pem"))
    assert info.dns_names[1:] == (name.lower().rstrip("."),)


@pytest.mark.parametrize("ip", ["fe80::1%eth0", "fe80::1%1"])
def test_issue_refuses_an_ipv6_address_with_a_zone(
        pki: Pki, capsys: pytest.CaptureFixture[str], ip: str) -> None:
    """An iPAddress SAN is the address' 16 octets (RFC 5280 §4.2.1.6): a zone
    (``%eth0``, RFC 4007 §11) cannot be written, so `--ip fe80::1%eth0` is refused,
    quoted, instead of certifying ``fe80::1`` in silence."""
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "orderd", ttl_h=1, ips=(ip,))
    assert repr(ip) in str(info.value)
    assert main(["certs", "issue", "orderd", "--dir", str(pki.dir), "--ip", ip]) == 1
    assert repr(ip) in capsys.readouterr().err
    assert not (pki.dir / "orderd.pem").exists()
    issue_into_dir(pki.dir, "orderd", ttl_h=1, ips=("fe80::1", "127.0.0.1"))
    info2 = describe_certificate(load_certificate(pki.dir / "orderd.pem"))
    assert info2.ip_addresses == ("fe80::1", "127.0.0.1")
