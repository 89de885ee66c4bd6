"""``TLSOptions`` reads the trust domain from the bundle's CA that names one, not only
from the first certificate of ``ca_file``.

A bundle that trusts another CA besides the mesh CA (a corporate or cert-manager root,
which carries no ``spiffe://<td>`` URI SAN) listed first made ``TLSOptions`` fail with
"CA certificate names no SPIFFE trust domain", while the same bundle in the other order
worked; and with no SPIFFE CA at all (cert-manager's CA issuer) the error did not say the
trust domain can be given. The first CA of the bundle naming a trust domain now gives
it, and the error when none does names ``trust_domain=``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth import CertificateError, TLSOptions
from tests.auth.chains import foreign_ca, key_pem, pem, secret_dir, secret_tls, svid
from tests.auth.conftest import TD, Pki


def test_the_trust_domain_is_read_from_the_ca_naming_one(pki: Pki, tmp_path: Path) -> None:
    orderd = pki.issue("orderd")
    corporate = foreign_ca("corporate root", spiffe_td=None)
    mesh_ca = (pki.dir / "ca.pem").read_bytes()
    for bundle in (pem(corporate[1]) + mesh_ca, mesh_ca + pem(corporate[1])):
        (tmp_path / "bundle.pem").write_bytes(bundle)
        tls = TLSOptions(ca_file=tmp_path / "bundle.pem", cert_file=orderd.cert_file,
                         key_file=orderd.key_file)
        assert tls.trust_domain == TD
        assert tls.spiffe_id == f"spiffe://{TD}/svc/orderd"


def test_no_ca_naming_a_trust_domain_says_to_give_it(tmp_path: Path) -> None:
    ca = foreign_ca("cert-manager CA", spiffe_td=None)
    key, leaf = svid(ca, "orderd")
    d = secret_dir(tmp_path, "orderd", ca=pem(ca[1]), crt=pem(leaf), key=key_pem(key))
    with pytest.raises(CertificateError, match=r"trust_domain="):
        secret_tls(d)
    assert secret_tls(d, trust_domain=TD).spiffe_id == f"spiffe://{TD}/svc/orderd"


def test_a_bundle_trusting_another_mesh_first_gives_the_workloads_trust_domain(
        pki: Pki, tmp_path: Path) -> None:
    """A bundle federating another mesh (its CA names its own trust domain, as the
    authorization policy's foreign-trust-domain check expects) listed before the mesh
    CA gave its trust domain to the options, which then refused the workload's own
    certificate ("is for trust domain 'meshkit.test', expected 'partner.example'"),
    while the same bundle in the other order worked (the first CA naming a trust domain
    gave it). The trust domain of the workload's certificate is now taken when a CA of
    the bundle names it."""
    orderd = pki.issue("orderd")
    partner = foreign_ca("partner root", spiffe_td="partner.example")
    mesh_ca = (pki.dir / "ca.pem").read_bytes()
    for bundle in (pem(partner[1]) + mesh_ca, mesh_ca + pem(partner[1])):
        (tmp_path / "bundle.pem").write_bytes(bundle)
        tls = TLSOptions(ca_file=tmp_path / "bundle.pem", cert_file=orderd.cert_file,
                         key_file=orderd.key_file)
        assert tls.trust_domain == TD
        assert tls.spiffe_id == f"spiffe://{TD}/svc/orderd"
    # a certificate of a trust domain no CA of the bundle names: refused as before
    (tmp_path / "bundle.pem").write_bytes(pem(partner[1]))
    with pytest.raises(CertificateError, match=r"partner\.example"):
        TLSOptions(ca_file=tmp_path / "bundle.pem", cert_file=orderd.cert_file,
                   key_file=orderd.key_file)
