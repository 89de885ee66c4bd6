"""Identity authorization policy, pure: who may call which method.

In the spirit of Istio's AuthorizationPolicy and Linkerd's MeshTLSAuthentication: a
:class:`Rule` names the peers (mTLS SPIFFE IDs) and token subjects (JWT ``sub``) that
are allowed or denied, with ``*`` wildcards; an :class:`AuthzPolicy` picks the rule for a
method — the exact method, else the service-level rule, else ``default`` (which denies
everything unless configured) — and :meth:`AuthzPolicy.evaluate` returns a
:class:`Decision`. No I/O, no grpc.aio: :class:`~meshkit.auth.AuthzInterceptor` binds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc

from meshkit.auth._identity import IdentityMatcher
from meshkit.auth._jwt_types import Claims
from meshkit.errors import ConfigError

__all__ = ["AuthzPolicy", "Decision", "Rule"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Who may call the methods a rule applies to.

    Evaluation: a denied peer or subject is refused first (``PERMISSION_DENIED``); then the
    call is allowed if ``allow_anonymous``, or the peer matches ``allow_peers``, or a
    verified token's subject matches ``allow_subjects``; otherwise it is refused —
    ``UNAUTHENTICATED`` when the caller has no verified identity at all, else
    ``PERMISSION_DENIED``.

    Args:
        allow_peers: SPIFFE ID patterns, e.g. ``("spiffe://meshkit.local/svc/orderd",)``;
            ``"*"`` = any verified peer (default none).
        deny_peers: SPIFFE ID patterns refused even if allowed (default none).
        allow_subjects: JWT ``sub`` patterns; ``"*"`` = any caller with a verified token
            (default none).
        deny_subjects: JWT ``sub`` patterns refused even if allowed (default none).
        allow_anonymous: allow callers with neither a peer identity nor a token
            (default ``False``; for health checks on plaintext servers).

    Raises:
        ConfigError: a pattern is empty or not a string.
    """

    allow_peers: tuple[str, ...] = ()
    deny_peers: tuple[str, ...] = ()
    allow_subjects: tuple[str, ...] = ()
    deny_subjects: tuple[str, ...] = ()
    allow_anonymous: bool = False
    _m: tuple[IdentityMatcher, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        for name in ("allow_peers", "deny_peers", "allow_subjects", "deny_subjects"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"{name} must be a tuple of patterns, got the string {value!r}")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "_m", (
            IdentityMatcher(self.allow_peers), IdentityMatcher(self.deny_peers),
            IdentityMatcher(self.allow_subjects), IdentityMatcher(self.deny_subjects),
        ))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`AuthzPolicy.evaluate`.

    Attributes:
        allowed: whether the call may proceed.
        code: ``OK``, ``PERMISSION_DENIED`` or ``UNAUTHENTICATED``.
        rule: which rule applied: the method, ``"/<service>/*"`` or ``"default"``.
        reason: why, for logs only (never sent to the caller).
    """

    allowed: bool
    code: grpc.StatusCode
    rule: str
    reason: str


def _check_key(key: str) -> None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise ConfigError(
            f"policy keys must be '/<package.Service>/<Method>' or '/<package.Service>/*', "
            f"got {key!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzPolicy:
    """Per-method authorization: method overrides, service-level rules, a default.

    Args:
        rules: ``{"/ecom.v1.UserService/GetUser": Rule(...), "/ecom.v1.UserService/*":
            Rule(...)}``; an exact method key wins over its service's ``/*`` key.
        default: the rule for methods no key names (default ``Rule()``: deny all).

    Raises:
        ConfigError: a key is not ``/<service>/<method>`` or ``/<service>/*``.

    Example::

        AuthzPolicy(rules={
            "/ecom.v1.UserService/GetUser": Rule(allow_peers=(workload_id(td, "orderd"),)),
            "/ecom.v1.OrderService/*": Rule(allow_subjects=("*",)),
            "/grpc.health.v1.Health/*": Rule(allow_peers=("*",), allow_anonymous=True),
        })
    """

    rules: Mapping[str, Rule] = field(default_factory=dict)
    default: Rule = field(default_factory=Rule)

    def __post_init__(self) -> None:
        for key, rule in self.rules.items():
            _check_key(key)
            if not isinstance(rule, Rule):
                raise ConfigError(f"rule for {key!r} must be a Rule, got {rule!r}")
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    def rule_for(self, method: str) -> tuple[str, Rule]:
        """The ``(key, rule)`` that applies to ``method`` (``"/pkg.Svc/Method"``)."""
        rule = self.rules.get(method)
        if rule is not None:
            return method, rule
        service_key = method[: method.rfind("/") + 1] + "*"
        rule = self.rules.get(service_key)
        if rule is not None:
            return service_key, rule
        return "default", self.default

    def evaluate(self, method: str, peer_id: str | None, claims: Claims | None) -> Decision:
        """Decide whether a caller may call ``method``.

        Args:
            method: full gRPC method, e.g. ``"/ecom.v1.UserService/GetUser"``.
            peer_id: the verified mTLS peer SPIFFE ID, or ``None``.
            claims: the verified token's claims, or ``None``.

        Returns:
            A :class:`Decision`; see :class:`Rule` for the order of checks.
        """
        key, rule = self.rule_for(method)
        allow_p, deny_p, allow_s, deny_s = rule._m
        subject = claims.subject if claims is not None else None
        if deny_p.matches(peer_id):
            return Decision(False, grpc.StatusCode.PERMISSION_DENIED, key, "peer is denied")
        if deny_s.matches(subject):
            return Decision(False, grpc.StatusCode.PERMISSION_DENIED, key, "subject is denied")
        if rule.allow_anonymous:
            return Decision(True, grpc.StatusCode.OK, key, "anonymous allowed")
        if allow_p.matches(peer_id):
            return Decision(True, grpc.StatusCode.OK, key, "peer allowed")
        if allow_s.matches(subject):
            return Decision(True, grpc.StatusCode.OK, key, "subject allowed")
        if peer_id is None and claims is None:
            return Decision(False, grpc.StatusCode.UNAUTHENTICATED, key, "no verified identity")
        return Decision(False, grpc.StatusCode.PERMISSION_DENIED, key, "no allow rule matched")
