"""AuthzPolicy: the pure per-method identity policy."""

from __future__ import annotations

import grpc
import pytest

from meshkit.auth import AuthzPolicy, Claims, Rule
from meshkit.errors import ConfigError

ORDERD = "spiffe://meshkit.test/svc/orderd"
GATEWAY = "spiffe://meshkit.test/svc/gateway"
GET_USER = "/ecom.v1.UserService/GetUser"


def claims(sub: str = "user-1") -> Claims:
    """Claims of a verified token for ``sub``."""
    return Claims(subject=sub, issuer="i", audience=("a",), scopes=frozenset(), expires_at=1e12)


POLICY = AuthzPolicy(
    rules={
        GET_USER: Rule(allow_peers=(ORDERD,)),
        "/ecom.v1.UserService/*": Rule(allow_subjects=("*",), deny_subjects=("banned-*",)),
        "/ecom.v1.OrderService/*": Rule(allow_peers=("spiffe://meshkit.test/svc/*",),
                                        deny_peers=("spiffe://meshkit.test/svc/evil",)),
        "/grpc.health.v1.Health/*": Rule(allow_anonymous=True),
    }
)


def test_only_orderd_may_get_user() -> None:
    """The method rule allows the order service and refuses every other peer or user."""
    assert POLICY.evaluate(GET_USER, ORDERD, None).allowed
    d = POLICY.evaluate(GET_USER, GATEWAY, claims())
    assert not d.allowed and d.code is grpc.StatusCode.PERMISSION_DENIED and d.rule == GET_USER


def test_method_rule_overrides_service_rule() -> None:
    """A user with a token may call the service's other methods but not the overridden one."""
    assert POLICY.evaluate("/ecom.v1.UserService/Login", GATEWAY, claims()).allowed
    assert not POLICY.evaluate(GET_USER, None, claims()).allowed


def test_deny_wins_over_allow() -> None:
    """A denied peer or subject is refused even when an allow pattern matches it."""
    evil = "spiffe://meshkit.test/svc/evil"
    assert POLICY.evaluate("/ecom.v1.OrderService/Place", ORDERD, None).allowed
    assert not POLICY.evaluate("/ecom.v1.OrderService/Place", evil, None).allowed
    assert not POLICY.evaluate("/ecom.v1.UserService/Login", None, claims("banned-1")).allowed


def test_default_denies_and_no_identity_is_unauthenticated() -> None:
    """Unlisted methods are denied; a caller with no identity at all gets UNAUTHENTICATED."""
    d = POLICY.evaluate("/x.Y/Z", ORDERD, None)
    assert not d.allowed and d.rule == "default"
    assert POLICY.evaluate("/x.Y/Z", None, None).code is grpc.StatusCode.UNAUTHENTICATED


def test_anonymous_rule() -> None:
    """allow_anonymous lets identity-less callers through (health checks)."""
    assert POLICY.evaluate("/grpc.health.v1.Health/Check", None, None).allowed


@pytest.mark.parametrize("key", ["GetUser", "/svc", "/svc/", "/a/b/c", "", " /a.B/C", "/*"])
def test_bad_rule_keys_refused(key: str) -> None:
    """Keys that are not method patterns fail at construction, quoting the key."""
    with pytest.raises(ConfigError) as info:
        AuthzPolicy(rules={key: Rule()})
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("key", [
    GET_USER, "ecom.v1.UserService/GetUser", "UserService/GetUser", "UserService/Get*",
    "*/GetUser", "/ecom.v1.UserService/*",
])
def test_every_method_pattern_spelling_selects_the_rule(key: str) -> None:
    """Full, slash-less, short and glob keys all apply to /ecom.v1.UserService/GetUser,
    and the decision names the key as written."""
    policy = AuthzPolicy(rules={key: Rule(allow_peers=(ORDERD,))})
    d = policy.evaluate(GET_USER, ORDERD, None)
    assert d.allowed and d.rule == key
    other = policy.evaluate("/ecom.v1.OrderService/Place", ORDERD, None)
    assert not other.allowed and other.rule == "default"


def test_exact_over_longest_glob_over_default() -> None:
    """Exact method > longest glob (most literal characters) > default; the old 'method over
    service key over default' is the special case of a service key /pkg.Svc/*."""
    policy = AuthzPolicy(rules={
        "UserService/GetUser": Rule(allow_peers=(ORDERD,)),  # exact (short spelling)
        "/ecom.v1.UserService/*": Rule(allow_subjects=("*",)),  # 21 literal characters
        "*/Get*": Rule(allow_anonymous=True),  # 4
    }, default=Rule(allow_peers=(GATEWAY,)))
    exact = policy.evaluate(GET_USER, None, claims())
    assert not exact.allowed and exact.rule == "UserService/GetUser"
    longest = policy.evaluate("/ecom.v1.UserService/GetEmail", None, None)
    assert not longest.allowed and longest.rule == "/ecom.v1.UserService/*"
    short_glob = policy.evaluate("/ecom.v1.OrderService/GetOrder", None, None)
    assert short_glob.allowed and short_glob.rule == "*/Get*"
    default = policy.evaluate("/ecom.v1.OrderService/Place", GATEWAY, None)
    assert default.allowed and default.rule == "default"


def test_two_spellings_of_one_key_refused() -> None:
    """'/a.B/C' and 'a.B/C' are one key: giving both would make the rule order-dependent."""
    with pytest.raises(ConfigError, match="same pattern"):
        AuthzPolicy(rules={"/a.B/C": Rule(), "a.B/C": Rule(allow_anonymous=True)})


def test_patterns_given_as_string_refused() -> None:
    """A bare string (not a tuple) would match per character, so it is refused."""
    with pytest.raises(ConfigError):
        Rule(allow_peers=ORDERD)  # type: ignore[arg-type]
