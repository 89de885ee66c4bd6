"""Identity authorization policy, pure: who may call which method.

In the spirit of Istio's AuthorizationPolicy and Linkerd's MeshTLSAuthentication: a
:class:`Rule` names the peers (mTLS SPIFFE IDs) and token subjects (JWT ``sub``) that
are allowed or denied, with ``*`` wildcards; an :class:`AuthzPolicy` picks the rule for a
method by method pattern (:mod:`meshkit._methods`) — an exact pattern, else the longest
glob (a service-level ``/pkg.Svc/*`` among them), else ``default`` (which denies
everything unless configured) — and :meth:`AuthzPolicy.evaluate` returns a
:class:`Decision`. No I/O, no grpc.aio: :class:`~meshkit.auth.AuthzInterceptor` binds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from meshkit._config import check_bool, check_strings
from meshkit._fields import FrozenMap
from meshkit._methods import MethodMatcher
from meshkit.auth._identity import IdentityMatcher, _glob_matches
from meshkit.auth._jwt_types import Claims
from meshkit.errors import ConfigError

__all__ = ["AuthzPolicy", "Decision", "Rule"]


class _Matches(Protocol):
    def matches(self, identity: str | None) -> bool: ...


class _DeniedSubjects:
    """``deny_subjects``' matcher: as :class:`IdentityMatcher` (validated by one), except
    that a ``*`` matches any run of characters, ``/`` included. A JWT ``sub`` is the
    issuer's opaque string (``repo:org/repo:ref:refs/heads/main``), so a deny wildcard
    that stopped at a ``/`` would let such a subject past the list. Matched piece by piece
    with ``str`` searches, in time linear in the subject per pattern, not by a regex,
    which backtracks polynomially (``"a*a*a*a*b"`` against a long ``sub``)."""

    __slots__ = ("_any", "_exact", "_wild")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        IdentityMatcher(patterns, where="deny_subjects")  # the same checks and errors
        self._any = "*" in patterns
        self._exact = frozenset(p for p in patterns if "*" not in p)
        self._wild = tuple(tuple(p.split("*")) for p in patterns if "*" in p)

    def matches(self, identity: str | None) -> bool:
        if identity is None:
            return False
        if self._any or identity in self._exact:
            return True
        return any(_glob_matches(parts, identity) for parts in self._wild)


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
        deny_subjects: JWT ``sub`` patterns refused even if allowed (default none); here
            a ``*`` matches any run of characters, ``/`` included (a ``sub`` is the
            issuer's opaque string: ``"repo:evil-org/*"`` refuses
            ``repo:evil-org/x:ref:refs/heads/main``), where in the allow lists it stops
            at a ``/``.
        allow_anonymous: allow callers with neither a peer identity nor a token, and so
            every caller the deny lists do not refuse, identified or not (what a caller
            with a token could get by dropping it; default ``False``; for health checks
            on plaintext servers). ``Rule(allow_peers=(orderd,), allow_anonymous=True)``
            admits every workload, not orderd and anonymous callers alone.

    Raises:
        ConfigError: a list of patterns given as one string or not a collection
            (``None``), a pattern is empty or not a string, or a peer pattern can match no
            workload's SPIFFE ID (``spiffe://<trust domain>/svc/<service>``: an upper-case
            trust domain, a trailing ``/``, another path; quoted, with why), which in
            ``deny_peers`` would refuse no one.
    """

    allow_peers: tuple[str, ...] = ()
    deny_peers: tuple[str, ...] = ()
    allow_subjects: tuple[str, ...] = ()
    deny_subjects: tuple[str, ...] = ()
    allow_anonymous: bool = False
    _m: tuple[_Matches, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        check_bool("allow_anonymous", self.allow_anonymous)  # "false" would allow them
        for name in ("allow_peers", "deny_peers", "allow_subjects", "deny_subjects"):
            object.__setattr__(self, name, check_strings(name, getattr(self, name)))
        object.__setattr__(self, "_m", (
            IdentityMatcher(self.allow_peers, where="allow_peers", peers=True),
            IdentityMatcher(self.deny_peers, where="deny_peers", peers=True),
            IdentityMatcher(self.allow_subjects), _DeniedSubjects(self.deny_subjects),
        ))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`AuthzPolicy.evaluate`.

    Attributes:
        allowed: whether the call may proceed.
        code: ``OK``, ``PERMISSION_DENIED`` or ``UNAUTHENTICATED``.
        rule: which rule applied: its key in :attr:`AuthzPolicy.rules` as written (e.g.
            ``"/ecom.v1.UserService/GetUser"``, ``"OrderService/*"``) or ``"default"``.
        reason: why, for logs only (never sent to the caller).
    """

    allowed: bool
    code: grpc.StatusCode
    rule: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzPolicy:
    """Per-method authorization: rules by method pattern, and a default.

    Keys are method patterns (:mod:`meshkit._methods`): full
    ``"/ecom.v1.UserService/GetUser"``, slash-less, short ``"UserService/GetUser"``, or
    globs ``"/ecom.v1.UserService/*"``, ``"*/Get*"``, ``"*"``. The rule of a method is
    MethodMatcher's: an exact pattern, else the longest glob (most literal characters;
    ties: fewer ``*``, then code-point order), else ``default``. The usual "exact method
    over its service key ``/pkg.Svc/*`` over the default" is the special case of that
    rule. A name that is no gRPC method path (``//pkg.Svc/M``, ``/x/pkg.Svc/M``,
    ``/pkg.Svc/``: only a catch-all generic handler serves one) gets the ``"*"`` key's
    rule, else ``default``, never another key's. Resolved once per method and cached
    (one dict lookup a call).

    Args:
        rules: ``{method pattern: Rule}``, e.g. ``{"/ecom.v1.UserService/GetUser":
            Rule(...), "/ecom.v1.UserService/*": Rule(...)}``.
        default: the rule for methods no key matches (default ``Rule()``: deny all).

    Raises:
        ConfigError: a key that is not a method pattern (quoted), two spellings of one
            pattern, or a value that is not a :class:`Rule`. When a
            :class:`~meshkit.MeshServer` starts with the policy, a full key naming a
            method that a service it serves does not have (``"/pkg.Svc/PlaceOder"``)
            is a ``ConfigError`` from ``start()``, and keys matching no method it serves
            are named in a warning (:func:`meshkit._methods.check_served`).

    Example (the health methods by name: ``"/grpc.health.v1.Health/*"`` would also let
    anyone call any other name under the service, which a catch-all generic handler
    serves)::

        probe = Rule(allow_peers=("*",), allow_anonymous=True)
        AuthzPolicy(rules={
            "/ecom.v1.UserService/GetUser": Rule(allow_peers=(workload_id(td, "orderd"),)),
            "/ecom.v1.OrderService/*": Rule(allow_subjects=("*",)),
            "/grpc.health.v1.Health/Check": probe,
            "/grpc.health.v1.Health/Watch": probe,
            "/grpc.health.v1.Health/List": probe,
        })
    """

    rules: Mapping[str, Rule] = field(default_factory=dict)
    default: Rule = field(default_factory=Rule)
    _matcher: MethodMatcher[Rule] = field(init=False, repr=False, compare=False,
                                          default_factory=lambda: MethodMatcher({}, Rule()))

    def __post_init__(self) -> None:
        matcher = MethodMatcher(self.rules, self.default, where="AuthzPolicy.rules")
        for key, rule in self.rules.items():
            if not isinstance(rule, Rule):
                raise ConfigError(f"rule for {key!r} must be a Rule, got {rule!r}")
        if not isinstance(self.default, Rule):
            raise ConfigError(f"default must be a Rule, got {self.default!r}")
        object.__setattr__(self, "rules", FrozenMap(self.rules))
        object.__setattr__(self, "_matcher", matcher)

    def rule_for(self, method: str) -> tuple[str, Rule]:
        """The ``(key, rule)`` that applies to full method name ``method``
        (``"/pkg.Svc/Method"``): the key as written, or ``"default"``."""
        key, rule = self._matcher.match(method)
        return ("default" if key is None else key), rule

    def evaluate(self, method: str, peer_id: str | None, claims: Claims | None) -> Decision:
        """Decide whether a caller may call ``method``.

        Args:
            method: full gRPC method, e.g. ``"/ecom.v1.UserService/GetUser"``.
            peer_id: the verified mTLS peer SPIFFE ID, or ``None``.
            claims: the verified token's claims, or ``None``.

        Returns:
            A :class:`Decision`; see :class:`Rule` for the order of checks. Claims whose
            ``subject`` is not a string (a verifier of one's own mapping a JSON array)
            are refused first, ``PERMISSION_DENIED`` ("subject is not a string").
        """
        key, rule = self.rule_for(method)
        allow_p, deny_p, allow_s, deny_s = rule._m
        subject = claims.subject if claims is not None else None
        if subject is not None and not isinstance(subject, str):
            # Claims of a verifier of one's own, say a JSON array: it cannot be matched
            # against the deny list, so it is no identity to let in
            return Decision(False, grpc.StatusCode.PERMISSION_DENIED, key,
                            "subject is not a string")
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
