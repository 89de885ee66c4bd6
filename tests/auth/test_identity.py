"""SPIFFE IDs, identity names and ``*`` patterns (pure)."""

from __future__ import annotations

import pytest

from meshkit.auth import (
    IdentityMatcher,
    PeerIdentityInterceptor,
    SpiffeId,
    identity_dns_name,
    workload_id,
)
from meshkit.auth._identity import (
    peer_from_identities,
    validate_service_label,
    validate_trust_domain,
)
from meshkit.errors import ConfigError


def test_workload_id_and_identity_name() -> None:
    """A service gets spiffe://<td>/svc/<service> and the DNS name <service>.svc.<td>."""
    assert workload_id("meshkit.test", "orderd") == "spiffe://meshkit.test/svc/orderd"
    assert identity_dns_name("meshkit.test", "orderd") == "orderd.svc.meshkit.test"


@pytest.mark.parametrize("bad", ["Orderd", "order_d", "a.b", "", "-x", "x" * 64])
def test_service_names_must_be_one_dns_label(bad: str) -> None:
    """Names that could collide or break DNS are refused, quoting the value."""
    with pytest.raises(ConfigError, match="got"):
        workload_id("meshkit.test", bad)


@pytest.mark.parametrize("bad", [
    "http://td/x", "spiffe://TD/x", "spiffe://td/a//b", "spiffe://td/a/../b", "spiffe://td/x/",
    "spiffe://td:443/x", "spiffe://td/x?q=1", "spiffe://",
])
def test_spiffe_id_parser_rejects_invalid(bad: str) -> None:
    """The parser follows the SPIFFE ID rules on scheme, trust domain and path."""
    with pytest.raises(ConfigError):
        SpiffeId.parse(bad)


def test_spiffe_id_parse_round_trip() -> None:
    """A valid ID parses into trust domain, path and service and prints back unchanged."""
    sid = SpiffeId.parse(b"spiffe://meshkit.test/svc/userd")
    assert (sid.trust_domain, sid.path, sid.service) == ("meshkit.test", "/svc/userd", "userd")
    assert str(sid) == "spiffe://meshkit.test/svc/userd"


def test_peer_needs_exactly_one_spiffe_uri() -> None:
    """Zero or two SPIFFE URIs among the verified SANs yield no peer identity."""
    one = [b"spiffe://td/svc/a", b"a.svc.td", b"127.0.0.1"]
    peer = peer_from_identities(one)
    assert peer is not None and peer.service == "a"
    assert peer_from_identities([b"a.svc.td"]) is None
    assert peer_from_identities([b"spiffe://td/svc/a", b"spiffe://td/svc/b"]) is None
    assert peer_from_identities(None) is None


def test_peer_needs_exactly_one_uri_san() -> None:
    """X.509-SVID section 2: a second URI SAN of any scheme, or a URI that is no SPIFFE ID,
    yields no peer identity; DNS names, IPv4/IPv6 addresses and e-mail SANs do not count."""
    sid = b"spiffe://td/svc/a"
    assert peer_from_identities([sid, b"a.svc.td", b"::1", b"fe80::1", b"10.0.0.1",
                                 b"ops@td"]) is not None
    for other in (b"https://td/x", b"urn:x:y", b"http://a.svc.td"):
        assert peer_from_identities([sid, other]) is None, other
        assert peer_from_identities([other, sid]) is None, other
    assert peer_from_identities([b"https://td/svc/a"]) is None


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", " ", "\x00"])
def test_trailing_newline_or_junk_is_no_identity(suffix: str) -> None:
    """``$`` matches before a final newline; every validating pattern must match the whole
    string, so ``spiffe://td/svc/orderd\\n`` is no SPIFFE ID and ``orderd\\n`` no service
    name or trust domain (SPIFFE ID section 2.2: [a-zA-Z0-9.-_] only)."""
    with pytest.raises(ConfigError):
        SpiffeId.parse(f"spiffe://td/svc/orderd{suffix}")
    with pytest.raises(ConfigError):
        SpiffeId.parse(f"spiffe://td{suffix}/svc/orderd")
    assert peer_from_identities([f"spiffe://td/svc/orderd{suffix}".encode()]) is None
    with pytest.raises(ConfigError, match="got"):
        validate_service_label(f"orderd{suffix}")
    with pytest.raises(ConfigError, match="got"):
        validate_trust_domain(f"meshkit.test{suffix}")
    with pytest.raises(ConfigError):
        workload_id(f"meshkit.test{suffix}", "orderd")
    assert SpiffeId("td", f"/svc/orderd{suffix}").service is None


def test_matcher_wildcards() -> None:
    """'*' matches any run of characters; exact patterns match only themselves."""
    m = IdentityMatcher(["spiffe://td/svc/*", "spiffe://x/svc/exact"])
    assert m.matches("spiffe://td/svc/orderd")
    assert m.matches("spiffe://x/svc/exact")
    assert not m.matches("spiffe://x/svc/exact2")
    assert not m.matches("spiffe://other/svc/orderd")
    assert not m.matches(None)
    assert IdentityMatcher(["*"]).matches("anything")
    assert not IdentityMatcher([]).matches("anything")
    assert IdentityMatcher(["a.b*"]).matches("a.bc") and not IdentityMatcher(["a.b*"]).matches(
        "aXbc")


@pytest.mark.parametrize("path", [
    "/svc/orderd/extra", "/svc/orderd/x/y", "/svc/Orderd", "/svc/order_d", "/svc/a.b",
    "/svc/-x", "/svc", "/other/orderd", "/svcx/orderd", "",
])
def test_only_exactly_svc_label_is_a_workload(path: str) -> None:
    """SpiffeId.service is None unless the path is exactly /svc/<one DNS label>."""
    assert SpiffeId.parse(f"spiffe://td{path}").service is None


def test_peer_from_identities_refuses_non_workload_ids() -> None:
    """A verified SPIFFE ID with extra path segments yields no peer identity."""
    assert peer_from_identities([b"spiffe://td/svc/orderd/extra"]) is None
    assert peer_from_identities([b"spiffe://td/svc/Orderd"]) is None
    assert peer_from_identities([b"spiffe://td"]) is None


def test_matcher_refuses_one_string() -> None:
    """A string is not split into one-character patterns (``"*"`` among them matched
    every identity): refused, naming the field (PeerIdentityInterceptor.allowed_peers)."""
    with pytest.raises(ConfigError, match=r"patterns.*'spiffe://td/svc/order\*'"):
        IdentityMatcher("spiffe://td/svc/order*")
    with pytest.raises(ConfigError, match=r"allowed_peers.*'spiffe://td/svc/order\*'"):
        PeerIdentityInterceptor("td", "spiffe://td/svc/order*")  # type: ignore[arg-type]
    assert IdentityMatcher(("spiffe://td/svc/order*",)).matches("spiffe://td/svc/orderd")


def test_matcher_star_does_not_cross_slash() -> None:
    """A '*' inside a pattern matches within one path segment; a lone '*' matches all."""
    m = IdentityMatcher(["spiffe://td/svc/*"])
    assert m.matches("spiffe://td/svc/orderd")
    assert not m.matches("spiffe://td/svc/orderd/extra")
    assert not IdentityMatcher(["spiffe://*/svc/orderd"]).matches("spiffe://a/b/svc/orderd")
    assert IdentityMatcher(["spiffe://*/svc/orderd"]).matches("spiffe://a.b/svc/orderd")
    assert not IdentityMatcher(["spiffe://td/*"]).matches("spiffe://td/svc/orderd")
    assert IdentityMatcher(["*"]).matches("spiffe://td/svc/orderd/extra")
    assert IdentityMatcher(["user-*"]).matches("user-1")
    assert not IdentityMatcher(["user-*"]).matches("user-1/admin")


def test_policy_wildcard_does_not_admit_non_workload_ids() -> None:
    """An allow-list rule spiffe://<td>/svc/* refuses spiffe://<td>/svc/orderd/extra and a
    deny rule with the same pattern still denies the workloads it names."""
    from meshkit.auth import AuthzPolicy, Rule

    policy = AuthzPolicy(rules={"/p.S/*": Rule(allow_peers=("spiffe://td/svc/*",))})
    assert policy.evaluate("/p.S/M", "spiffe://td/svc/orderd", None).allowed
    assert not policy.evaluate("/p.S/M", "spiffe://td/svc/orderd/extra", None).allowed
    deny = AuthzPolicy(default=Rule(allow_peers=("*",), deny_peers=("spiffe://td/svc/*",)))
    assert not deny.evaluate("/p.S/M", "spiffe://td/svc/orderd", None).allowed


@pytest.mark.parametrize("pattern", [
    "spiffe://MeshKit.local/svc/evil",  # SPIFFE trust domains are lower case
    "spiffe://meshkit.local/svc/evil/",  # a trailing slash
    "spiffe://meshkit.local/evil",  # no /svc/
    "spiffe://meshkit.local/*",  # '*' never crosses '/'
    "spiffe://cluster.local/ns/default/sa/evil",  # a Kubernetes-style path
    "meshkit.local/svc/evil",  # no scheme
    "SPIFFE://meshkit.local/svc/evil",
    "spiffe://meshkit.local/svc/Evil",  # a service is a lower-case DNS label
    "spiffe://meshkit.local",
])
def test_a_peer_pattern_that_can_match_no_workload_is_refused(pattern: str) -> None:
    """A peer's identity is always ``spiffe://<trust domain>/svc/<service>``, lower case
    (what PeerVerifier yields). A ``deny_peers`` entry of another shape (an upper-case
    trust domain, a trailing slash, a path of another mesh) was accepted and matched no
    one, so the peer it was meant to refuse was let in, in silence; in ``allow_peers``,
    ``allowed_peers`` or ``allowed_publishers`` it refused every caller with no clue why.
    Each is now a ConfigError at construction, quoting the pattern and saying why; JWT
    subject patterns (any string) are not checked."""
    from meshkit.auth import AuthzPolicy, Rule

    for make in (lambda: Rule(allow_peers=("*",), deny_peers=(pattern,)),
                 lambda: Rule(allow_peers=(pattern,)),
                 lambda: PeerIdentityInterceptor("meshkit.local", (pattern,))):
        with pytest.raises(ConfigError, match=r"can match no peer") as info:
            make()
        assert repr(pattern) in str(info.value)
    assert AuthzPolicy(default=Rule(allow_subjects=(pattern,))) is not None  # subjects: any


@pytest.mark.parametrize("pattern", [
    "*", "spiffe://meshkit.local/svc/orderd", "spiffe://meshkit.local/svc/*",
    "spiffe://*/svc/orderd", "spiffe://meshkit.local/svc/order-*", "spiffe://m*.local/*/x",
])
def test_peer_patterns_that_can_match_a_workload_are_accepted(pattern: str) -> None:
    """Every pattern that can match ``spiffe://<trust domain>/svc/<service>`` is kept."""
    assert IdentityMatcher((pattern,), peers=True).patterns == (pattern,)
