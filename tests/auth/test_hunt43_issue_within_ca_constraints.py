"""``issue_workload`` refuses a certificate its CA's name constraints forbid.

It checked only the extra ``dns``/``ips`` against the CA's *permitted* DNS and IP
subtrees. The names it always writes — the SPIFFE ID (URI SAN) and the identity DNS
name ``<service>.svc.<td>`` — and every excluded subtree went unchecked, so with a CA
not made by ``meshkit certs init`` (a corporate or cert-manager CA constraining its
names) it wrote a certificate that ``PeerVerifier`` (every meshkit peer) and
``TLSOptions`` refuse, instead of the ``ConfigError`` its docstring promises for a name
outside the CA's constraints.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.auth import PeerVerifier, create_ca, issue_workload
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

TD = "meshkit.test"
NOW = dt.datetime.now(dt.UTC)


def _ca(permitted: list[x509.GeneralName] | None,
        excluded: list[x509.GeneralName] | None = None
        ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp CA")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=permitted,
                                            excluded_subtrees=excluded), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{TD}")]), critical=False)
        .sign(key, hashes.SHA256()))
    return key, cert


CASES: dict[str, tuple[list[x509.GeneralName] | None, list[x509.GeneralName] | None, str]] = {
    # the identity DNS name outside the only permitted DNS subtree
    "dns-permitted-elsewhere": ([x509.DNSName("corp.example")], None,
                                "orderd.svc.meshkit.test"),
    # the SPIFFE ID's host outside the permitted URI subtree
    "uri-permitted-elsewhere": ([x509.UniformResourceIdentifier("other.test"),
                                 x509.DNSName(TD)], None, "spiffe://meshkit.test/svc/orderd"),
    # the identity DNS name in an excluded subtree
    "dns-excluded": ([x509.DNSName(TD)], [x509.DNSName(f"svc.{TD}")],
                     "orderd.svc.meshkit.test"),
    # an extra IP in an excluded network
    "ip-excluded": (None, [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))],
                    "10.1.2.3"),
}


@pytest.mark.parametrize("case", sorted(CASES), ids=sorted(CASES))
def test_a_name_the_ca_forbids_is_refused_at_issue(case: str) -> None:
    permitted, excluded, name = CASES[case]
    key, ca = _ca(permitted, excluded)
    ips = ("10.1.2.3",) if case == "ip-excluded" else ()
    with pytest.raises(ConfigError, match=r"name constraints|excludes") as err:
        issue_workload(key, ca, "orderd", ttl_h=1, ips=ips)
    assert name in str(err.value)


def test_what_is_issued_is_what_peers_accept() -> None:
    """A CA whose constraints the names fit still issues, and the peers take it; a
    meshkit CA (URI and DNS constraints of its own) too."""
    for key, ca in (_ca([x509.DNSName(TD), x509.DNSName("localhost"),
                         x509.UniformResourceIdentifier(TD)],
                        [x509.DNSName(f"userd.svc.{TD}")]),
                    create_ca(trust_domain=TD, ttl_days=1)):
        _leaf_key, leaf = issue_workload(key, ca, "orderd", ttl_h=1, dns=("localhost",),
                                         ips=("127.0.0.1",))
        verifier = PeerVerifier(ca.public_bytes(serialization.Encoding.PEM))
        assert verifier.verify(leaf).service == "orderd"
