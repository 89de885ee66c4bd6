"""PeerVerifier, pure: which peer certificates yield a workload identity, caching, reload."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit.auth import (
    CertificateError,
    PeerVerifier,
    TLSOptions,
    create_ca,
    default_peer_verifier,
    load_certificate,
    load_private_key,
)
from meshkit.errors import ConfigError
from tests.auth.chains import (
    auth_context,
    ca_of,
    ca_with_duplicate_extension,
    foreign_ca,
    key_pem,
    key_usage,
    leaf,
    pem,
    replace_file,
    sub_ca,
    svid,
)
from tests.auth.conftest import TD, Pki


class FakeClock:
    """A settable wall clock (epoch seconds)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def verifier_for(pki: Pki, **kw: object) -> PeerVerifier:
    """A verifier trusting ``pki``'s CA."""
    return PeerVerifier((pki.dir / "ca.pem").read_bytes(), **kw)  # type: ignore[arg-type]


def refusal(logs: list[dict[str, object]]) -> str:
    """The reason of the one logged refusal."""
    reasons = [str(e["reason"]) for e in logs if e["event"] == "peer certificate refused"]
    assert len(reasons) == 1, logs
    return reasons[0]


def test_meshkit_leaf_is_identified_and_cached(pki: Pki) -> None:
    """A leaf from the mesh CA yields its workload identity; the verdict is cached."""
    ca_key, ca = ca_of(pki)
    _k, cert = leaf(ca_key, ca, service="orderd", dns=[f"orderd.svc.{TD}", "localhost"],
                    ips=["127.0.0.1"])
    v = verifier_for(pki)
    peer = v.identify(auth_context(cert))
    assert peer is not None
    assert (peer.spiffe_id, peer.trust_domain, peer.service) == (
        f"spiffe://{TD}/svc/orderd", TD, "orderd")
    assert v.identify(auth_context(cert)) is peer and v.cached == 1
    assert v.anchored and not default_peer_verifier().anchored


def test_leaf_through_sub_ca_refused_with_or_without_chain(pki: Pki) -> None:
    """A leaf issued by a sub-CA is refused whether or not the chain is presented."""
    ca_key, ca = ca_of(pki)
    sub_key, sub = sub_ca(ca_key, ca, path_length=0)
    _k, cert = leaf(sub_key, sub)
    for ctx in (auth_context(cert, sub), auth_context(cert), auth_context(cert, sub, ca)):
        v = verifier_for(pki)
        with structlog.testing.capture_logs() as logs:
            assert v.identify(ctx) is None
        assert "directly" in refusal(logs)


def test_same_issuer_name_other_key_refused(pki: Pki, other_pki: Pki) -> None:
    """A leaf from another CA with the very same subject name fails the signature check."""
    other_key, other_ca = ca_of(other_pki)
    assert other_ca.subject == ca_of(pki)[1].subject
    _k, cert = leaf(other_key, other_ca)
    assert verifier_for(pki).identify(auth_context(cert)) is None


@pytest.mark.parametrize("case", [
    "ca_true", "key_cert_sign", "no_digital_signature", "server_only_eku", "extra_path",
    "uppercase_service", "two_spiffe_ids", "no_spiffe_id", "other_trust_domain",
    "dns_outside_constraints", "second_uri_san", "only_a_non_spiffe_uri", "trailing_newline",
    "other_identity_name", "wildcard_identity_name",
])
def test_leaf_defects_refused(pki: Pki, case: str) -> None:
    """Leaves no workload may hold are refused, each for its reason."""
    ca_key, ca = ca_of(pki)
    kw: dict[str, object] = {}
    if case == "ca_true":
        kw = {"ca": True}
    elif case == "key_cert_sign":
        kw = {"usage": key_usage(sign_certs=True, digital_signature=True)}
    elif case == "no_digital_signature":
        kw = {"usage": key_usage(sign_certs=False, digital_signature=False)}
    elif case == "extra_path":
        kw = {"uris": [f"spiffe://{TD}/svc/orderd/extra"]}
    elif case == "uppercase_service":
        kw = {"uris": [f"spiffe://{TD}/svc/Orderd"]}
    elif case == "two_spiffe_ids":
        kw = {"uris": [f"spiffe://{TD}/svc/orderd", f"spiffe://{TD}/svc/userd"]}
    elif case == "no_spiffe_id":
        kw = {"uris": []}
    elif case == "other_trust_domain":
        kw = {"uris": ["spiffe://other.test/svc/orderd"]}
    elif case == "dns_outside_constraints":
        kw = {"dns": [f"orderd.svc.{TD}", "evil.example.com"]}
    elif case == "second_uri_san":  # X.509-SVID section 2: exactly one URI SAN
        kw = {"uris": [f"spiffe://{TD}/svc/orderd", f"https://{TD}/x"]}
    elif case == "only_a_non_spiffe_uri":
        kw = {"uris": [f"https://{TD}/svc/orderd"]}
    elif case == "trailing_newline":  # `$` would match before it
        kw = {"uris": [f"spiffe://{TD}/svc/orderd\n"]}
    elif case == "other_identity_name":  # orderd's SVID naming userd's identity name
        kw = {"dns": [f"orderd.svc.{TD}", f"userd.svc.{TD}"]}
    elif case == "wildcard_identity_name":
        kw = {"dns": [f"orderd.svc.{TD}", f"*.svc.{TD}"]}
    if case == "server_only_eku":
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key, base = leaf(ca_key, ca, eku=False)
        builder = x509.CertificateBuilder(
            issuer_name=base.issuer, subject_name=base.subject, public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=base.not_valid_before_utc, not_valid_after=base.not_valid_after_utc,
            extensions=list(base.extensions))
        cert = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False).sign(ca_key, hashes.SHA256())
    else:
        _k, cert = leaf(ca_key, ca, **kw)  # type: ignore[arg-type]
    v = verifier_for(pki)
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(cert)) is None
    reason = refusal(logs)
    assert reason and "directly" not in reason
    with pytest.raises(CertificateError):
        v.verify(cert)


def test_ip_outside_the_cas_networks_refused() -> None:
    """With IP constraints on the CA, an IP SAN outside them is refused, inside accepted."""
    ca_key, ca = create_ca(trust_domain=TD, ttl_days=1, permitted_ips=("10.0.0.0/8",))
    v = PeerVerifier(pem(ca))
    assert v.identify(auth_context(leaf(ca_key, ca, ips=["10.1.2.3"])[1])) is not None
    assert v.identify(auth_context(leaf(ca_key, ca, ips=["192.168.0.1"])[1])) is None


def test_trusted_certificates_that_may_not_issue_are_refused(pki: Pki) -> None:
    """A leaf signed by a bundle certificate that is not a CA (CA:FALSE, or CA:TRUE
    without keyCertSign) is refused."""
    pki.issue("userd")
    not_ca = load_certificate(pki.dir / "userd.pem")
    _k, cert = leaf(load_private_key(pki.dir / "userd.key"), not_ca)
    with structlog.testing.capture_logs() as logs:
        assert PeerVerifier(pem(not_ca)).identify(auth_context(cert)) is None
    assert "not a CA" in refusal(logs)

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "no keyCertSign")])
    now = dt.datetime.now(dt.UTC)
    weak = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(sign_certs=False), critical=True)
            .sign(key, hashes.SHA256()))
    with structlog.testing.capture_logs() as logs:
        assert PeerVerifier(pem(weak)).identify(auth_context(leaf(key, weak)[1])) is None
    assert "keyCertSign" in refusal(logs)


def test_validity_period_checked_at_call_time(pki: Pki) -> None:
    """A cached identity lapses when the certificate expires; a future leaf waits."""
    clock = FakeClock()
    ca_key, ca = ca_of(pki)
    _k, cert = leaf(ca_key, ca, ttl_h=1)
    v = verifier_for(pki, clock=clock)
    assert v.identify(auth_context(cert)) is not None
    clock.now += 2 * 3600
    assert v.identify(auth_context(cert)) is None
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    _k, later = leaf(ca_key, ca, not_before=future, ttl_h=1)
    clock.now = future.timestamp() - 60
    assert v.identify(auth_context(later)) is None
    clock.now = future.timestamp() + 60
    assert v.identify(auth_context(later)) is not None
    assert v.verify(cert, at=None).service == "orderd"  # own files: period not checked
    with pytest.raises(CertificateError, match="expired"):
        v.verify(cert, at=clock.now + 3 * 3600)


def test_validity_period_includes_its_not_after_second(pki: Pki) -> None:
    """RFC 5280 §4.1.2.5: a certificate is valid "from notBefore through notAfter,
    inclusive". A leaf (and a CA) was refused as expired at the exact second of its
    notAfter, and a cached identity lapsed there; both hold through it and end past it."""
    ca_key, ca = ca_of(pki)
    _k, cert = leaf(ca_key, ca, ttl_h=1)
    not_after = cert.not_valid_after_utc.timestamp()
    clock = FakeClock()
    clock.now = not_after
    assert verifier_for(pki, clock=clock).identify(auth_context(cert)) is not None
    v = verifier_for(pki, clock=clock)
    assert v.verify(cert, at=not_after).service == "orderd"
    with pytest.raises(CertificateError, match="expired"):
        v.verify(cert, at=not_after + 1)
    clock.now = not_after - 10
    assert v.identify(auth_context(cert)) is not None
    clock.now = not_after
    assert v.identify(auth_context(cert)) is not None  # the cached verdict holds
    clock.now = not_after + 0.001
    assert v.identify(auth_context(cert)) is None
    # the CA's notAfter likewise, for a leaf that outlives its CA
    _k, longer = leaf(ca_key, ca, ttl_h=72)
    ca_not_after = ca.not_valid_after_utc.timestamp()
    clock.now = ca_not_after - 10
    assert v.identify(auth_context(longer)) is not None
    clock.now = ca_not_after
    assert v.identify(auth_context(longer)) is not None
    assert verifier_for(pki, clock=clock).identify(auth_context(longer)) is not None
    clock.now = ca_not_after + 1
    assert v.identify(auth_context(longer)) is None


def test_cache_is_bounded(pki: Pki) -> None:
    """No more than max_entries verdicts are kept; the oldest go first."""
    ca_key, ca = ca_of(pki)
    v = verifier_for(pki, max_entries=2)
    certs = [leaf(ca_key, ca, service=f"svc{i}")[1] for i in range(3)]
    for c in certs:
        assert v.identify(auth_context(c)) is not None
    assert v.cached == 2
    with pytest.raises(ConfigError, match="max_entries"):
        verifier_for(pki, max_entries=0)


def test_bundle_from_file_follows_renewal(pki: Pki, other_pki: Pki, tmp_path: Path) -> None:
    """A CA added to the bundle file is trusted at once for a new issuer, and after the
    reload interval for a certificate refused before; a broken file keeps the old bundle."""
    clock = FakeClock()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((pki.dir / "ca.pem").read_bytes())
    v = PeerVerifier.from_file(bundle, reload_interval_s=5, clock=clock)
    other_key, other_ca = ca_of(other_pki)
    _k, refused_first = leaf(other_key, other_ca, service="early")
    assert v.identify(auth_context(refused_first)) is None
    bundle.write_bytes((pki.dir / "ca.pem").read_bytes() + pem(other_ca))
    _k, new = leaf(other_key, other_ca, service="late")
    assert v.identify(auth_context(new)) is not None  # unknown issuer: re-read at once
    assert v.identify(auth_context(refused_first)) is not None  # the reload emptied the cache
    bundle.write_bytes(b"garbage")
    clock.now += 10
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(new)) is not None
    assert any(e["event"] == "CA bundle reload skipped" for e in logs)
    with pytest.raises(ConfigError):
        PeerVerifier.from_file(bundle, reload_interval_s=0)
    with pytest.raises(CertificateError):
        PeerVerifier.from_file(bundle)


def test_bundle_less_mode_refuses_presented_intermediates(pki: Pki) -> None:
    """Without a bundle, a peer presenting an intermediate CA is refused; a lone leaf or a
    leaf followed by its self-signed root is identified."""
    ca_key, ca = ca_of(pki)
    sub_key, sub = sub_ca(ca_key, ca)
    _k, rogue = leaf(sub_key, sub)
    _k, good = leaf(ca_key, ca)
    v = PeerVerifier()
    assert v.identify(auth_context(rogue, sub)) is None
    assert v.identify(auth_context(rogue, sub, ca)) is None
    assert v.identify(auth_context(good)) is not None
    assert v.identify(auth_context(good, ca)) is not None
    _k, odd = leaf(ca_key, ca, uris=[f"spiffe://{TD}/svc/orderd/extra"])
    assert v.identify(auth_context(odd)) is None


def test_no_or_unreadable_certificate_is_no_identity(pki: Pki) -> None:
    """Plaintext peers, peers without a certificate and garbage yield None."""
    v = verifier_for(pki)
    assert v.identify(None) is None
    assert v.identify({}) is None
    assert v.identify({"transport_security_type": [b"insecure"]}) is None
    assert v.identify({"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nAAAA\n"]}) is None
    with pytest.raises(CertificateError):
        PeerVerifier(b"not a certificate")


def _write(tmp_path: Path, pki: Pki, name: str, key: object, *chain: x509.Certificate
           ) -> TLSOptions:
    (tmp_path / f"{name}.pem").write_bytes(pem(*chain))
    (tmp_path / f"{name}.key").write_bytes(key_pem(key))  # type: ignore[arg-type]
    return TLSOptions(ca_file=pki.dir / "ca.pem", cert_file=tmp_path / f"{name}.pem",
                      key_file=tmp_path / f"{name}.key")


def test_tls_options_refuse_own_certificate_peers_would_refuse(pki: Pki,
                                                               tmp_path: Path) -> None:
    """A workload's own certificate with a non-workload SPIFFE ID, a second URI SAN,
    another workload's identity name (or a wildcard over them), or issued through a
    sub-CA, fails when the options are built, not at the first call."""
    ca_key, ca = ca_of(pki)
    key, odd = leaf(ca_key, ca, uris=[f"spiffe://{TD}/svc/orderd/extra"])
    with pytest.raises(CertificateError, match="not a workload identity"):
        _write(tmp_path, pki, "odd", key, odd)
    key, two = leaf(ca_key, ca, uris=[f"spiffe://{TD}/svc/orderd", f"https://{TD}/x"])
    with pytest.raises(CertificateError, match="exactly one URI SAN"):
        _write(tmp_path, pki, "two", key, two)
    for other in (f"userd.svc.{TD}", f"*.svc.{TD}"):
        key, impostor = leaf(ca_key, ca, dns=[f"orderd.svc.{TD}", other])
        with pytest.raises(CertificateError, match=r"refused by peers.*identity name"):
            _write(tmp_path, pki, "impostor", key, impostor)
    sub_key, sub = sub_ca(ca_key, ca)
    key, rogue = leaf(sub_key, sub)
    with pytest.raises(CertificateError, match=r"refused by peers.*directly"):
        _write(tmp_path, pki, "rogue", key, rogue, sub)
    tls = pki.issue("orderd")
    assert tls.peer_interceptor().verifier is tls.peer_verifier()
    assert tls.peer_verifier().anchored


def _constrained_ca(permitted: list[x509.GeneralName], excluded: list[x509.GeneralName] | None
                    ) -> tuple[object, x509.Certificate]:
    """A CA naming no trust domain, with the given name constraints."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "constrained")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(sign_certs=True), critical=True)
            .add_extension(x509.NameConstraints(permitted_subtrees=permitted or None,
                                                excluded_subtrees=excluded), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def test_name_constraints_follow_rfc5280() -> None:
    """URI constraints match the host exactly (or below, with a leading '.'), DNS ones the
    name or below it; excluded subtrees win; other constrained name types are refused."""
    key, ca = _constrained_ca(
        [x509.UniformResourceIdentifier("td.example"), x509.DNSName("svc.td.example"),
         x509.RFC822Name("example.org")],
        [x509.DNSName("bad.svc.td.example")])
    v = PeerVerifier(pem(ca))

    def ok(uri: str, *dns: str, email: bool = False) -> bool:
        _k, cert = leaf(key, ca, uris=[uri], dns=list(dns))  # type: ignore[arg-type]
        if email:
            from cryptography.hazmat.primitives import hashes

            cert = x509.CertificateBuilder(
                issuer_name=cert.issuer, subject_name=cert.subject,
                public_key=cert.public_key(), serial_number=x509.random_serial_number(),
                not_valid_before=cert.not_valid_before_utc,
                not_valid_after=cert.not_valid_after_utc,
                extensions=[e for e in cert.extensions if e.oid != x509.SubjectAlternativeName.oid]
            ).add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.RFC822Name("a@example.org")]),
                critical=False).sign(key, hashes.SHA256())  # type: ignore[arg-type]
        return v.identify(auth_context(cert)) is not None

    assert ok("spiffe://td.example/svc/a", "a.svc.td.example")
    assert not ok("spiffe://x.td.example/svc/a", "a.svc.td.example")  # host must be exact
    assert not ok("spiffe://td.example/svc/a", "a.other.example")
    assert not ok("spiffe://td.example/svc/a", "x.bad.svc.td.example")  # excluded
    assert not ok("spiffe://td.example/svc/a", "a.svc.td.example", email=True)
    key2, below = _constrained_ca([x509.UniformResourceIdentifier(".example")], None)
    _k, cert = leaf(key2, below, uris=["spiffe://td.example/svc/a"], dns=[])  # type: ignore[arg-type]
    assert PeerVerifier(pem(below)).identify(auth_context(cert)) is not None
    _k, cert = leaf(key2, below, uris=["spiffe://example/svc/a"], dns=[])  # type: ignore[arg-type]
    assert PeerVerifier(pem(below)).identify(auth_context(cert)) is None


def test_bundle_with_a_malformed_ca_keeps_its_good_cas(pki: Pki, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A trust bundle that gains a CA certificate with a duplicated extension (RFC 5280
    §4.2; cryptography raises ``x509.DuplicateExtension``, no ValueError) made every
    identify() raise it at each reload check (every call failed UNKNOWN on the server),
    and PeerVerifier / TLSOptions given such a bundle raised it too. Now the malformed CA
    is unusable (a leaf it signed is refused, saying why) and the bundle's other CAs work;
    TLSOptions reads the trust domain past a malformed CA, and over a bundle with no other
    CA raises CertificateError; and any exception reading a changed bundle is logged and
    the old bundle kept, as from_file documents."""
    ca_key, ca = ca_of(pki)
    _k, cert = leaf(ca_key, ca)
    odd_key, odd = ca_with_duplicate_extension("odd CA")
    clock = FakeClock()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem(ca))
    v = PeerVerifier.from_file(bundle, reload_interval_s=1, clock=clock)
    assert v.identify(auth_context(cert)) is not None
    replace_file(bundle, pem(ca, odd))
    for _ in range(3):
        clock.now += 2
        assert v.identify(auth_context(cert)) is not None
    assert PeerVerifier(pem(odd, ca)).identify(auth_context(cert)) is not None
    # a leaf under the malformed CA: refused with the reason, not an exception
    _k, odd_leaf = leaf(odd_key, odd)
    with structlog.testing.capture_logs() as logs:
        assert PeerVerifier(pem(odd, ca)).identify(auth_context(odd_leaf)) is None
    assert "malformed" in refusal(logs)
    # TLSOptions reads the trust domain from the bundle's first CA naming one: the mesh
    # CA after the malformed one; a bundle of the malformed CA alone names it
    pki.issue("orderd")
    first_odd = tmp_path / "odd-first.pem"
    first_odd.write_bytes(pem(odd, ca))
    assert TLSOptions(ca_file=first_odd, cert_file=pki.dir / "orderd.pem",
                      key_file=pki.dir / "orderd.key").trust_domain == TD
    first_odd.write_bytes(pem(odd))
    with pytest.raises(CertificateError, match="malformed"):
        TLSOptions(ca_file=first_odd, cert_file=pki.dir / "orderd.pem",
                   key_file=pki.dir / "orderd.key")
    # whatever a reload raises, the poll logs it and keeps the bundle
    def broken(self: PeerVerifier, ca_pem: bytes) -> bool:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(PeerVerifier, "reload", broken)
    bundle.write_bytes(pem(ca) + b"\n")
    clock.now += 2
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(cert)) is not None
    assert any(e["event"] == "CA bundle reload skipped" for e in logs), logs


def test_leaf_through_a_presented_intermediate_is_identified() -> None:
    """X.509-SVID §3/§5, RFC 5280 §6: with only the root in the bundle, a leaf issued by
    an intermediate (pathlen:0) the peer presents is identified (its chain validated per
    CA); the verdict is cached per leaf and chain; without the intermediate it is refused
    (no path), and so it was before whatever the chain."""
    root = foreign_ca("upstream root")
    inter = foreign_ca("signing CA", issuer=root, path_length=0)
    _k, cert = svid(inter, "orderd")
    v = PeerVerifier(pem(root[1]))
    for ctx in (auth_context(cert, inter[1]), auth_context(cert, inter[1], root[1])):
        peer = v.identify(ctx)
        assert peer is not None and peer.spiffe_id == f"spiffe://{TD}/svc/orderd"
        assert v.identify(ctx) is peer
    assert v.cached == 2
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(cert)) is None
    assert "directly" in refusal(logs)
    assert v.verify(cert, [inter[1]]).service == "orderd"
    with pytest.raises(CertificateError, match="directly"):
        v.verify(cert)


@pytest.mark.parametrize("case", [
    "root_pathlen_zero", "intermediate_pathlen_zero", "intermediate_name_constraints",
    "intermediate_other_trust_domain", "root_other_trust_domain", "intermediate_not_a_ca",
])
def test_chains_through_intermediates_breaking_a_ca_constraint_are_refused(case: str) -> None:
    """Each CA on the path keeps its constraints: a root's or an intermediate's
    ``pathlen:0`` with a CA below it (BoringSSL ignores the root's), an intermediate's
    DNS name constraints, a CA naming another SPIFFE trust domain, a non-CA
    "intermediate"; each is refused with its reason, never identified."""
    root = foreign_ca("root", path_length=0 if case == "root_pathlen_zero" else None,
                      spiffe_td="other.test" if case == "root_other_trust_domain" else TD)
    inter = foreign_ca("inter", issuer=root,
                       path_length=0 if case == "intermediate_pathlen_zero" else None,
                       spiffe_td="other.test" if case == "intermediate_other_trust_domain"
                       else TD,
                       permitted_dns=([f"billing.svc.{TD}"]
                                      if case == "intermediate_name_constraints" else None))
    chain: tuple[x509.Certificate, ...] = (inter[1],)
    issuer = inter
    if case in ("root_pathlen_zero", "intermediate_pathlen_zero"):
        issuer = foreign_ca("below", issuer=inter, path_length=None)
        chain = (issuer[1], inter[1])
    if case == "intermediate_not_a_ca":
        issuer = svid(root, "userd")
        chain = (issuer[1],)
    _k, cert = svid(issuer, "orderd")
    v = PeerVerifier(pem(root[1]))
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(cert, *chain)) is None
    reason = refusal(logs)
    expected = {"root_pathlen_zero": "path length", "intermediate_pathlen_zero": "path length",
                "intermediate_name_constraints": "name constraint",
                "intermediate_other_trust_domain": "trust domain",
                "root_other_trust_domain": "trust domain",
                "intermediate_not_a_ca": "directly"}[case]
    assert expected in reason, reason
    with pytest.raises(CertificateError):
        v.verify(cert, list(chain))


def test_validity_through_an_intermediate_is_checked_at_call_time() -> None:
    """A leaf outliving its intermediate is identified while both are valid and refused
    once the intermediate has expired (the cached verdict lapses with it)."""
    clock = FakeClock()
    root = foreign_ca("root")
    inter = foreign_ca("short-lived CA", issuer=root, path_length=0, ttl_h=0.5)
    _k, cert = svid(inter, "orderd", ttl_h=2)
    v = PeerVerifier(pem(root[1]), clock=clock)
    ctx = auth_context(cert, inter[1])
    assert v.identify(ctx) is not None
    clock.now += 3600
    assert v.identify(ctx) is None


T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def renewed_ca(key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
               not_before: dt.datetime, not_after: dt.datetime, *,
               trust_domain: str | None = None) -> x509.Certificate:
    """``ca`` re-issued with the same key, subject and extensions and a new validity
    period: a CA renewal that keeps its key (cert-manager's CA issuer with
    ``rotationPolicy: Never``, ``openssl x509 -days ... -signkey``); ``trust_domain``
    replaces the SPIFFE ID it names."""
    builder = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    for ext in ca.extensions:
        value = ext.value
        if trust_domain is not None and isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")])
        builder = builder.add_extension(value, ext.critical)
    return builder.sign(key, hashes.SHA256())


def test_a_renewed_ca_vouches_when_the_old_one_of_the_bundle_has_expired() -> None:
    """A user renews the mesh CA certificate with the same key and appends the renewed
    one to ``ca.pem`` (``cat new-ca.pem >> ca.pem``: old and new trusted side by side,
    the standard rotation). Before: once the old CA certificate's notAfter passed, every
    peer was refused UNAUTHENTICATED "the CA certificate has expired", even leaves
    issued under the new one (``_check`` took the first bundle CA whose signature
    matched and checked only that one's validity); with the bundle in the other order
    the same leaf passed. Now every signature-matching CA of the bundle is tried, as
    RFC 5280 §6 and Go's ``crypto/x509`` do: the leaf is accepted whatever the order,
    and refused only when no candidate vouches, with the most relevant reason."""
    key, old = create_ca(trust_domain=TD, ttl_days=30, now=T0)
    new = renewed_ca(key, old, T0 + dt.timedelta(days=20), T0 + dt.timedelta(days=400))
    _, cert = leaf(key, new, not_before=T0 + dt.timedelta(days=29, hours=12), ttl_h=72)
    at = (T0 + dt.timedelta(days=30, hours=1)).timestamp()  # old expired an hour ago
    for bundle in (pem(new, old), pem(old, new)):
        assert PeerVerifier(bundle).verify(cert, at=at).service == "orderd"
        v = PeerVerifier(bundle, clock=lambda: at)
        assert v.identify(auth_context(cert)) is not None
    # neither vouches: the old one expired, the new one not yet valid; once it is, it does
    early = renewed_ca(key, old, T0 + dt.timedelta(days=31), T0 + dt.timedelta(days=400))
    clock = FakeClock()
    clock.now = at
    v = PeerVerifier(pem(old, early), clock=clock)
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(cert)) is None
    assert "the CA certificate is not valid yet" in refusal(logs)
    clock.now = (T0 + dt.timedelta(days=31)).timestamp()
    assert v.identify(auth_context(cert)) is not None
    # one defective candidate (another trust domain) and one expired: the expired one,
    # which would vouch but for its period, is reported
    other = renewed_ca(key, old, T0, T0 + dt.timedelta(days=400), trust_domain="other.org")
    with pytest.raises(CertificateError, match="the CA certificate has expired"):
        PeerVerifier(pem(other, old)).verify(cert, at=at)
    with pytest.raises(CertificateError, match="outside the CA's trust domain"):
        PeerVerifier(pem(other)).verify(cert, at=at)


def test_an_expired_verdict_is_forgotten_when_the_clock_is_corrected() -> None:
    """A server boots with its wall clock 9 hours ahead (a hardware clock kept in local
    time read as UTC) and a client connects with its 24 h certificate, 8 hours of it
    left: rightly refused as expired at that clock. Before: the refusal was cached until
    ``inf``, so after NTP stepped the clock back the same valid certificate was refused
    UNAUTHENTICATED on every call until the client renewed it or the server restarted.
    Now a verdict holds only while the clock stays within the times it was read for
    (for "expired": past notAfter): the peer is identified once the clock is right.
    Likewise a CA's expiry, and one on a path through an intermediate."""
    key, ca = create_ca(trust_domain=TD, ttl_days=365, now=T0)
    _, cert = leaf(key, ca, not_before=T0 + dt.timedelta(days=1), ttl_h=24)
    right = (T0 + dt.timedelta(days=1, hours=16)).timestamp()  # 8 h of validity left
    clock = FakeClock()
    clock.now = right + 9 * 3600.0  # 9 h ahead: past notAfter
    v = PeerVerifier(pem(ca), clock=clock)
    assert v.identify(auth_context(cert)) is None
    clock.now = right  # NTP steps the clock back
    peer = v.identify(auth_context(cert))
    assert peer is not None and peer.service == "orderd"
    # the CA's own expiry, for a leaf outliving it
    _, longer = leaf(key, ca, not_before=T0 + dt.timedelta(days=364, hours=12), ttl_h=48)
    right = (T0 + dt.timedelta(days=364, hours=20)).timestamp()
    clock.now = right + 9 * 3600.0
    assert v.identify(auth_context(longer)) is None
    clock.now = right
    assert v.identify(auth_context(longer)) is not None
    # a path through an intermediate
    clock = FakeClock()
    root = foreign_ca("root")
    inter = foreign_ca("short-lived CA", issuer=root, path_length=0, ttl_h=2)
    _k, through = svid(inter, "orderd", ttl_h=1)
    v = PeerVerifier(pem(root[1]), clock=clock)
    ctx = auth_context(through, inter[1])
    right, clock.now = clock.now, clock.now + 5 * 3600
    assert v.identify(ctx) is None
    clock.now = right
    assert v.identify(ctx) is not None


def test_an_identity_is_not_kept_when_the_clock_steps_back_before_not_before() -> None:
    """A server identifies a peer, then its wall clock is stepped back before the
    peer's certificate's notBefore (a VM restored from a snapshot). Before: the cached
    identity held (cached until notAfter, notBefore never re-checked), while a fresh
    verifier refused the same certificate as "not valid yet". Now the verdict holds
    only from the latest notBefore on its path: refused as a fresh verifier does, and
    identified again once the clock is back."""
    key, ca = create_ca(trust_domain=TD, ttl_days=365, now=T0)
    _, cert = leaf(key, ca, not_before=T0 + dt.timedelta(days=1), ttl_h=24)
    clock = FakeClock()
    clock.now = (T0 + dt.timedelta(days=1, hours=2)).timestamp()
    v = PeerVerifier(pem(ca), clock=clock)
    assert v.identify(auth_context(cert)) is not None
    clock.now -= 6 * 3600.0
    assert PeerVerifier(pem(ca), clock=clock).identify(auth_context(cert)) is None
    assert v.identify(auth_context(cert)) is None
    clock.now += 6 * 3600.0
    assert v.identify(auth_context(cert)) is not None
