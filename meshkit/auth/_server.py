"""grpc.aio server interceptors binding peer identity, JWT and authorization policy.

grpc.aio gives a server interceptor only the method and the metadata; the peer's verified
certificate is reachable only through the call's ``ServicerContext``
(``context.peer_identities()`` / ``context.auth_context()``). So every interceptor here
returns the method's handler *wrapped*: the check runs inside the call, with ``context``,
right before the handler, in the handler's task (which is also where the context
variables behind :func:`~meshkit.auth.current_peer` and
:func:`~meshkit.auth.current_claims` are set). Wrappers run in interceptor order, first
outermost; a check that fails aborts the call with its status and the handler never runs.
The first check of a call forgets any identity the call's task inherited rather than
verified (:func:`~meshkit.auth._context.fresh_identity`: a grpc.aio server started in a
handler runs its calls in copies of that handler's context), a method exempt from the
peer check included; inline, with no function call: a call pays a context-variable
read and a comparison per check, the first a write more (and three where its task did
inherit another call's variables, which a :class:`~meshkit.MeshServer` call never does).

A refused call is logged on ``meshkit.auth`` at info, but not one line per call: a caller
with a bad or expired token, or an attacker, would make one per call on each server (the
access log has its own line for every call, with the code). Each interceptor logs the
first refusal of each kind (its ``by``, and the call's ``method``, ``code`` and
``reason``; for the policy, the ``peer`` too) at once as ``call refused`` with every
field, and counts later ones of the kind for :data:`REFUSAL_LOG_INTERVAL_S`; the count
is then logged as ``calls refused`` with the kind's fields, ``count`` (the calls not
logged on a line of their own) and ``over_s``, when the interval ends, at the kind's next
refusal after it, or when the server stops (``aclose``). So every refused call is told,
on its own line or in a count, and the lines stay bounded: at most about two per kind and
interval, for at most :data:`REFUSAL_LOG_KINDS` kinds per interceptor at once (further
kinds share one, their lines marked ``untracked=True``;
:class:`~meshkit._log.RepeatLog`). No token or claim is ever in a line. An allowed call
pays nothing for this; a refused one a clock read and a dict lookup.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
from collections.abc import Awaitable, Collection
from typing import Any

import grpc
import structlog

from meshkit._config import check_instance, check_strings
from meshkit._handlers import Before, WrappingInterceptor
from meshkit._log import RepeatLog
from meshkit._metadata import call_metadata
from meshkit._methods import MethodMatcher, outranks
from meshkit.auth._authz import AuthzPolicy
from meshkit.auth._context import (
    _call,
    _claims,
    _forget_identity,
    _peer,
    _token,
    fresh_identity,
)
from meshkit.auth._errors import (
    InvalidTokenError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from meshkit.auth._identity import (
    IdentityMatcher,
    PeerIdentity,
    PeerVerifier,
    default_peer_verifier,
    foreign_pattern_domain,
    validate_trust_domain,
)
from meshkit.auth._jwt import JWTAuthOptions, JWTVerifier, TokenVerifier, extract_bearer
from meshkit.auth._jwt_types import Claims
from meshkit.errors import ConfigError

__all__ = [
    "AuthzInterceptor",
    "JWTAuthInterceptor",
    "PeerIdentityInterceptor",
]

_log = structlog.get_logger("meshkit.auth")

_call_get = _call.get  # for fresh_identity inline in each check (module docstring)
_call_set = _call.set

# the call (its context) an AuthzInterceptor judged without claims: a token check running
# after it for that call means a hand-built chain has the policy before the token check
_judged_unclaimed: contextvars.ContextVar[object] = contextvars.ContextVar(
    "meshkit_authz_judged_unclaimed", default=None)
_judged_get = _judged_unclaimed.get
_judged_set = _judged_unclaimed.set

_UNAUTH = grpc.StatusCode.UNAUTHENTICATED
_DENIED = grpc.StatusCode.PERMISSION_DENIED

REFUSAL_LOG_INTERVAL_S = 60.0
"""Seconds each kind of refused call is logged in full at most once per: the refusals of
the kind after its ``call refused`` line are counted and logged as one ``calls refused``
line (``count=``) when this interval ends (module docstring). Read when an interceptor is
built."""

REFUSAL_LOG_KINDS = 256
"""Kinds of refusal each interceptor tracks at once for its log (memory stays bounded
whatever a flood varies); refusals of further kinds are logged and counted together,
marked ``untracked=True``. Read when an interceptor is built."""


def _sync_function(func: object) -> bool:
    """Whether ``func`` is a plain Python function (or method) that is not a coroutine
    function, through its ``functools.wraps`` wrappers: what an ``async def verify``
    decorated by a sync wrapper is not (its wrapper's ``__wrapped__`` is async)."""
    inner = inspect.unwrap(func) if callable(func) else func
    plain = inspect.isfunction(inner) or inspect.ismethod(inner)
    return plain and not inspect.iscoroutinefunction(inner)


def check_token_verifier(verifier: object) -> None:
    """Check that ``verifier`` can verify tokens for :class:`JWTAuthInterceptor`: a
    :class:`~meshkit.auth.JWTVerifier`, or an object with an async ``verify(token)``.

    Raises:
        ConfigError: anything else: a ``VerifierOptions`` or a ``TokenVerifier`` given for
            it, ``None``, a class, an object whose ``verify`` is a plain sync function (a
            sync wrapper of an async one, or a compiled one, is taken: there is no
            coroutine function to inspect). The value is named by its type, never quoted:
            a mistaken one may be a token or a client secret (a class, ``None`` and
            booleans are named).
    """
    verify = getattr(verifier, "verify", None)
    if not isinstance(verifier, JWTVerifier) and (
            isinstance(verifier, (type, TokenVerifier)) or not callable(verify)
            or _sync_function(verify)):
        what = (f"the class {verifier.__qualname__}" if isinstance(verifier, type)
                else repr(verifier) if verifier is None or isinstance(verifier, bool)
                else f"a {type(verifier).__qualname__} (its value not shown: it may hold "
                     "a secret)")
        raise ConfigError("verifier must be a JWTVerifier (or an object with an async "
                          f"verify(token) method), got {what}")


def _check_peer_verifier(verifier: object) -> None:
    """Check that ``verifier`` (given, not ``None``) has an ``identify(auth_context)``.

    Raises:
        ConfigError: it has none (a class, ``TLSOptions``, a path, key bytes; named by its
            type, never quoted: it may be key material).
    """
    if isinstance(verifier, type) or not callable(getattr(verifier, "identify", None)):
        what = (f"the class {verifier.__qualname__}" if isinstance(verifier, type)
                else repr(verifier) if isinstance(verifier, bool)
                else f"a {type(verifier).__qualname__} (its value not shown: it may hold "
                     "a secret)")
        raise ConfigError("verifier must be a PeerVerifier (an object with an "
                          f"identify(auth_context) method) or None, got {what}")


def _offers_bearer(metadata: Any, key: str) -> bool:
    """Whether ``metadata`` has a ``key`` value that is, or may be, a bearer credential:
    binary, or of the ``Bearer`` scheme (compared as :func:`extract_bearer` does)."""
    for k, v in metadata or ():
        if k == key and (not isinstance(v, str) or v.partition(" ")[0].lower() == "bearer"):
            return True
    return False


def _check_policy_domain(policy: AuthzPolicy, trust_domain: str) -> None:
    """Check that every peer pattern of ``policy`` can match a peer of ``trust_domain``:
    :class:`AuthzInterceptor` refuses a peer of any other before the rules, so a pattern
    of another trust domain (a typo: ``meshkit.locl``) matches no one, which in
    ``deny_peers`` lets the workload it names in.

    Raises:
        ConfigError: such a pattern (the rule's key, the field and the pattern quoted).
    """
    for key, rule in (*policy.rules.items(), ("default", policy.default)):
        for name in ("allow_peers", "deny_peers"):
            for pattern in getattr(rule, name):
                if (domain := foreign_pattern_domain(pattern, (trust_domain,))) is not None:
                    raise ConfigError(
                        f"AuthzPolicy rule {key!r}: {name} pattern {pattern!r} is of trust "
                        f"domain {domain!r}, but this server takes peers of "
                        f"{trust_domain!r} only (any other is refused before the rules): "
                        "it would match no peer")


def _refusal_log(by: str, key_fields: tuple[str, ...] = ("method", "code", "reason"),
                 ) -> RepeatLog:
    """The ``call refused`` / ``calls refused`` lines of the interceptor named ``by``
    (``"peer"``, ``"jwt"``, ``"authz"``), a kind being ``key_fields``' values."""
    return RepeatLog(_log, "call refused", "calls refused", key_fields=key_fields,
                     fields={"by": by}, interval_s=REFUSAL_LOG_INTERVAL_S,
                     max_kinds=REFUSAL_LOG_KINDS)


async def _refuse(refusals: RepeatLog, context: Any, code: grpc.StatusCode, details: str,
                  method: str, reason: str) -> None:
    """Log the refusal (``refusals``: once per kind and interval, else counted) and abort
    the call with ``code`` and ``details`` (what the caller sees)."""
    refusals.report((method, code.name, reason))
    await context.abort(code, details)


class _RefusalLogged(WrappingInterceptor):
    """An interceptor that logs its refusals through ``self._refusals``."""

    _refusals: RepeatLog

    async def aclose(self) -> None:
        """Log the counts of refusals not told yet (``calls refused``); call it once the
        server has stopped (:class:`meshkit.MeshServer` does, after a drain or a failed
        start). The interceptor stays usable: a later refusal is logged in full again."""
        self._refusals.flush()


class PeerIdentityInterceptor(_RefusalLogged):
    """mTLS peer authentication: require a verified SPIFFE ID, optionally from a list.

    Checks the peer certificate (``context.auth_context()``) with ``verifier``, which
    yields its workload SPIFFE ID (exactly one ``spiffe://<td>/svc/<service>`` URI, SPIFFE
    X.509-SVID §2), requires it in ``trust_domain``, checks it against ``allowed_peers``
    and publishes it through :func:`~meshkit.auth.current_peer`.

    Args:
        trust_domain: the mesh trust domain, e.g. ``"meshkit.local"``.
        allowed_peers: SPIFFE ID patterns (``*`` wildcards) that may connect; empty
            (default) allows every workload of ``trust_domain``.
        exempt_methods: method patterns (:class:`~meshkit._methods.MethodMatcher`) exempt
            from the check, e.g. the health methods by name for a plaintext prober,
            ``("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
            "/grpc.health.v1.Health/List")`` (not ``"grpc.health.v1.Health/*"``, which
            also exempts any other name under the service: a catch-all generic handler
            serves it) (default none).
        verifier: the :class:`~meshkit.auth.PeerVerifier` that checks the peer's
            certificate and yields its workload identity (:meth:`TLSOptions.peer_interceptor`
            passes one over the trust bundle); default the bundle-less
            :func:`~meshkit.auth.default_peer_verifier`.

    Status codes: ``UNAUTHENTICATED`` with no verified workload identity (plaintext, no
    client certificate, zero or several SPIFFE URIs, a SPIFFE ID that is no workload, a
    chain the CA's constraints forbid), ``PERMISSION_DENIED`` for a foreign trust domain
    or a peer not in ``allowed_peers``. Refusals are logged ``by="peer"``, once per kind
    and :data:`REFUSAL_LOG_INTERVAL_S` (module docstring); the reason of a peer not
    allowed names its SPIFFE ID, so each such peer is a kind of its own.

    On a ``grpc.aio`` server of your own, ``await interceptor.aclose()`` once it has
    stopped: it logs the counts of the last interval's refusals, which are otherwise lost
    (:class:`~meshkit.MeshServer` does it for the interceptors it builds). One instance
    serves one event loop at a time (its refusal counts are not locked, its timer runs on
    that loop); servers on other loops or threads each need their own.

    Raises:
        ConfigError: ``allowed_peers`` or ``exempt_methods`` given as one string (as
            ``TLSOptions.allowed_peers``), ``exempt_methods`` not a collection of strings
            (``None``), or a bad pattern; a ``trust_domain`` that is
            not a lowercase DNS name (``"spiffe://meshkit.local"``, ``"Meshkit.Local"``,
            quoted), which no peer could be of: every call would be refused; a
            ``verifier`` without an ``identify(auth_context)`` method (quoted).
    """

    def __init__(self, trust_domain: str, allowed_peers: tuple[str, ...] = (), *,
                 exempt_methods: tuple[str, ...] = (),
                 verifier: PeerVerifier | None = None) -> None:
        super().__init__()
        self.trust_domain = validate_trust_domain(trust_domain)  # else every call refused
        self._allowed = (IdentityMatcher(allowed_peers, where="allowed_peers", peers=True)
                         if allowed_peers else None)
        self._exempt = MethodMatcher.of(check_strings("exempt_methods", exempt_methods),
                                        where="exempt_methods")
        if verifier is not None:
            _check_peer_verifier(verifier)
        self.verifier = verifier if verifier is not None else default_peer_verifier()
        self._refusals = _refusal_log("peer")

    def method_patterns(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``exempt_methods``' patterns (checked by :class:`~meshkit.MeshServer` against
        the methods it serves)."""
        return (("exempt_methods", self._exempt.patterns),)

    def identify(self, context: Any) -> PeerIdentity | None:
        """The verified workload identity of ``context``'s call, or ``None``."""
        return self.verifier.identify(context.auth_context())

    def _before_for(self, method: str) -> Before | None:
        """The peer check for ``method`` (see the class docstring)."""
        if self._exempt.lookup(method):
            return fresh_identity  # no inherited peer reaches the handler
        refusals = self._refusals

        def before(context: Any) -> Awaitable[None] | None:
            marked = _call_get()  # fresh_identity, inline: the call's first check marks
            if marked is not context:  # the variables as the call's, and clears those
                _call_set(context)  # its task inherited from another call's
                if marked is not None:
                    _forget_identity()
            peer = self.identify(context)
            if peer is None:
                return _refuse(refusals, context, _UNAUTH, "no verified peer identity",
                               method, "no SPIFFE ID")
            if peer.trust_domain != self.trust_domain or (
                self._allowed is not None and not self._allowed.matches(peer.spiffe_id)
            ):
                return _refuse(refusals, context, _DENIED,
                               f"caller is not allowed to call {method}", method,
                               f"peer {peer.spiffe_id} not allowed")
            _peer.set(peer)
            return None

        return before


class JWTAuthInterceptor(_RefusalLogged):
    """Bearer-token authentication and per-method scopes (RFC 6750, RFC 7519, RFC 8725).

    Reads ``authorization: Bearer <token>`` (``options.metadata_key``), verifies it with
    ``verifier`` (cached), requires the method's scopes, and publishes the claims through
    :func:`~meshkit.auth.current_claims` (and the token, for
    :class:`~meshkit.auth.TokenForwarder`).

    Args:
        verifier: a :class:`~meshkit.auth.JWTVerifier`.
        options: :class:`~meshkit.auth.JWTAuthOptions` (public methods, scopes).

    Status codes: ``UNAUTHENTICATED`` for a missing token on a non-public method, a
    non-``Bearer`` scheme on a non-public method (on a public one credentials of another
    scheme alone, ``Basic`` for a token endpoint, are no token, RFC 6750 §3.1: the call
    goes on without claims), a repeated header or any invalid token (message = category
    only); ``PERMISSION_DENIED`` for a valid token lacking a required scope. A verifier of one's
    own may refuse with :class:`~meshkit.auth.UnauthenticatedError` or
    :class:`~meshkit.auth.PermissionDeniedError` (that status, with the error's details);
    any other exception it raises, or a result that is no :class:`~meshkit.auth.Claims`
    (``None``) or whose ``subject`` is not a string, or whose ``scopes`` are no
    collection of strings (a string, ``None``), is ``UNAUTHENTICATED`` "token could not
    be verified" (its text is never sent; the log's reason names its type); scopes given
    as another collection (a list) are taken as the frozenset they make, for the scope
    check and the handler's :func:`~meshkit.auth.current_claims`. A
    returning token's claims come from the :class:`~meshkit.auth.JWTVerifier`'s cache
    without a coroutine; a verifier whose ``verify`` is not ``JWTVerifier``'s (a subclass
    overriding it to refuse revoked tokens, say, or one of your own) has it called for
    every call instead, unless its class overrides ``cached`` as well. Refusals
    are logged ``by="jwt"``, once per kind and :data:`REFUSAL_LOG_INTERVAL_S` (module
    docstring), the reason a category (``"token expired"``, ``"no token"``...), never the token.
    Running after an :class:`AuthzInterceptor` whose policy has subject rules and judged
    the call without claims (a hand-built chain in the wrong order) is logged once per
    interceptor, a warning (``authorization policy ran before the token check``).

    On a ``grpc.aio`` server of your own, ``await interceptor.aclose()`` once it has
    stopped: it logs the counts of the last interval's refusals, which are otherwise lost
    (:class:`~meshkit.MeshServer` does it for the interceptors it builds). One instance
    serves one event loop at a time (its refusal counts are not locked, its timer runs on
    that loop); servers on other loops or threads each need their own.

    Raises:
        ConfigError: a ``verifier`` that is neither a ``JWTVerifier`` nor has an async
            ``verify(token)`` (:func:`check_token_verifier`: a ``VerifierOptions``, a
            ``TokenVerifier``, ``None``; named by its type, never quoted), or ``options``
            that are not ``JWTAuthOptions`` (quoted): every call would be refused or fail.
    """

    def __init__(self, verifier: JWTVerifier, options: JWTAuthOptions | None = None) -> None:
        super().__init__()
        check_token_verifier(verifier)  # else every call refused, or crashed, at its check
        check_instance("options", options, JWTAuthOptions)
        self._verifier = verifier
        self._options = options or JWTAuthOptions()
        self._refusals = _refusal_log("jwt")
        self._order_told = False  # the authz-before-token warning, once

    def _tell_order(self, method: str) -> None:
        """Log, once per interceptor, that an :class:`AuthzInterceptor` judged a call
        before this token check (a hand-built chain in the wrong order)."""
        if self._order_told:
            return
        self._order_told = True
        _log.warning("authorization policy ran before the token check", method=method,
                     fix="put JWTAuthInterceptor before AuthzInterceptor in the server's "
                         "interceptors (PeerIdentityInterceptor, JWTAuthInterceptor, "
                         "AuthzInterceptor): the policy saw no claims, so its "
                         "deny_subjects refused no one and allow_subjects everyone")

    # read-only: each method's check holds them from its first call, so one assigned later
    # would apply to the methods not called yet alone
    @property
    def verifier(self) -> JWTVerifier:
        """The token verifier (read-only: build another interceptor to change it)."""
        return self._verifier

    @property
    def options(self) -> JWTAuthOptions:
        """The :class:`~meshkit.auth.JWTAuthOptions` (read-only)."""
        return self._options

    def method_patterns(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``JWTAuthOptions``' ``public_methods`` and ``method_scopes`` patterns (checked
        by :class:`~meshkit.MeshServer` against the methods it serves)."""
        opts = self._options
        return (("JWTAuthOptions.public_methods", opts.public_methods),
                ("JWTAuthOptions.method_scopes", tuple(opts.method_scopes)))

    def check_methods(self, methods: Collection[str]) -> None:
        """Refuse a method of ``methods`` that ``public_methods`` makes public while a
        ``method_scopes`` pattern at least as specific as the public one
        (:func:`~meshkit._methods.outranks`) requires scopes of it: a public method's
        scopes are never checked (a caller could drop the token), so that pattern would
        protect nothing. A less specific one (``"*"``) leaves the public method public,
        as ``default_scopes`` do.

        Raises:
            ConfigError: such a method (it and both patterns quoted)."""
        opts = self._options
        for method in sorted(methods):
            public, is_public = opts._public.match(method)
            if not is_public or public is None:
                continue
            scoped, scopes = opts._scopes.match(method)
            if scoped is None or not scopes or outranks(public, scoped):
                continue
            raise ConfigError(
                f"JWTAuthOptions: {method} is public (public_methods pattern {public!r}), "
                f"while method_scopes pattern {scoped!r}, as specific or more, requires "
                f"{sorted(scopes)} of it: a public method's scopes are not checked (a "
                "caller could drop the token); drop one of the two")

    def _before_for(self, method: str) -> Before | None:
        """The token check for ``method`` (see the class docstring)."""
        opts = self._options
        public = opts.is_public(method)
        scopes = opts.required_scopes(method)
        verifier = self._verifier
        # a returning token's claims from JWTVerifier's cache, without a coroutine; not
        # when its verify is another's (a subclass adding a revocation check, one's own
        # verifier): that sees every token, unless the subclass overrides cached too
        cached = (verifier.cached if isinstance(verifier, JWTVerifier) and (
            getattr(verifier.verify, "__func__", None) is JWTVerifier.verify
            or getattr(verifier.cached, "__func__", None) is not JWTVerifier.cached)
            else None)
        refusals = self._refusals

        check_scopes = not public and bool(scopes)  # no scopes: every token has them

        def admit(context: Any, token: str, claims: Claims) -> Awaitable[None] | None:
            if check_scopes and not claims.has_scopes(scopes):
                return _refuse(refusals, context, _DENIED, "token lacks a required scope",
                               method, "missing scope")
            _claims.set(claims)
            _token.set(token)
            return None

        async def verify(context: Any, token: str) -> None:
            try:
                claims = await verifier.verify(token)
            except InvalidTokenError as exc:
                await _refuse(refusals, context, _UNAUTH, exc.details() or "invalid token",
                              method, exc.details() or "invalid token")
                return
            except (UnauthenticatedError, PermissionDeniedError) as exc:
                # a verifier of one's own telling its verdict with meshkit's errors
                denied = isinstance(exc, PermissionDeniedError)
                text = exc.details() or ("permission denied" if denied else "unauthenticated")
                await _refuse(refusals, context, _DENIED if denied else _UNAUTH, text,
                              method, text)
                return
            except Exception as exc:  # a verifier's failure (its backend down): no text out
                await _refuse(refusals, context, _UNAUTH, "token could not be verified",
                              method, f"verifier raised {type(exc).__name__}")
                return
            if not isinstance(claims, Claims) or not isinstance(claims.subject, str):
                # one's own verify fell off its end (None), or mapped a JSON array "sub"
                what = (type(claims).__name__ if not isinstance(claims, Claims)
                        else f"a {type(claims.subject).__name__} subject")
                await _refuse(refusals, context, _UNAUTH, "token could not be verified",
                              method, f"verifier returned {what}")
                return
            granted = claims.scopes
            if type(granted) is not frozenset:  # one's own verifier's: a list, say
                if isinstance(granted, str) or not isinstance(granted, Collection) or not all(
                        isinstance(s, str) for s in granted):
                    # a string's characters, None, numbers: no scopes to check against
                    await _refuse(refusals, context, _UNAUTH, "token could not be verified",
                                  method, f"verifier returned scopes as a "
                                  f"{type(granted).__name__}")
                    return
                claims = dataclasses.replace(claims, scopes=frozenset(granted))
            pending = admit(context, token, claims)
            if pending is not None:
                await pending

        def before(context: Any) -> Awaitable[None] | None:
            marked = _call_get()  # fresh_identity, inline: the call's first check marks
            if marked is not context:  # the variables as the call's, and clears those
                _call_set(context)  # its task inherited from another call's
                if marked is not None:
                    _forget_identity()
            if _judged_get() is context:  # the policy judged this call already
                self._tell_order(method)
            try:
                token = extract_bearer(call_metadata(context), opts.metadata_key)
            except UnauthenticatedError as exc:
                if public and not _offers_bearer(call_metadata(context), opts.metadata_key):
                    return None  # another scheme alone (Basic): no token, RFC 6750 §3.1
                return _refuse(refusals, context, _UNAUTH,
                               exc.details() or "unauthenticated", method,
                               "bad authorization metadata")
            if token is None:
                if not public:
                    return _refuse(refusals, context, _UNAUTH, "missing bearer token",
                                   method, "no token")
                return None
            claims = cached(token) if cached is not None else None
            if claims is None:  # a new token: verified in a coroutine (keys may be fetched)
                return verify(context, token)
            if check_scopes:
                return admit(context, token, claims)
            _claims.set(claims)  # admit's, inline while no scope is checked: a frame less
            _token.set(token)
            return None

        return before


class AuthzInterceptor(_RefusalLogged):
    """Per-method identity authorization with an :class:`~meshkit.auth.AuthzPolicy`.

    Evaluates the policy with the verified peer SPIFFE ID (from
    :class:`PeerIdentityInterceptor` when it ran, else read from the call) and the verified
    token claims (from :class:`JWTAuthInterceptor`), so it goes after both in the chain.
    Put before the token check on a hand-built server, it would judge every call without
    claims (``deny_subjects`` refusing no one, ``allow_subjects`` everyone); the chain
    cannot be seen when an interceptor is built, so the :class:`JWTAuthInterceptor` that
    runs after it for a call a policy with subject rules judged without claims logs one
    warning
    (``authorization policy ran before the token check``, with the ``method`` and the
    ``fix``) per token interceptor; the call is not refused for it.

    Args:
        policy: the :class:`~meshkit.auth.AuthzPolicy`.
        verifier: the :class:`~meshkit.auth.PeerVerifier` that reads the peer's identity
            when no :class:`PeerIdentityInterceptor` ran for the call (a method exempt
            from it, or none in the chain): give the server's
            :meth:`TLSOptions.peer_verifier` (as :meth:`AuthOptions.interceptors` does),
            so that peers presenting an intermediate CA of the bundle (SPIRE) are read;
            default the bundle-less :func:`~meshkit.auth.default_peer_verifier`, which
            refuses every chain with an intermediate.
        trust_domain: the server's trust domain, e.g. ``"meshkit.local"``: a peer this
            interceptor reads itself from another trust domain (one more the CA bundle
            holds) is refused ``PERMISSION_DENIED``, as the peer check refuses it,
            whatever the policy says (``allow_peers=("*",)`` would match it);
            :meth:`AuthOptions.interceptors` gives ``TLSOptions``' domain. Default
            ``None``: any trust domain the verifier takes.

    Status codes: as the :class:`~meshkit.auth.Decision` says — ``PERMISSION_DENIED``
    (message ``"caller is not allowed to call <method>"``; no rule, pattern or other
    identity is named) or ``UNAUTHENTICATED`` when the caller has no verified identity;
    ``PERMISSION_DENIED`` (the same message) for a peer it read itself from a trust
    domain other than ``trust_domain``.
    Refusals are logged ``by="authz"`` with the decision's reason and rule and the peer's
    SPIFFE ID (never the token's claims), once per kind (method, code, reason and peer)
    and :data:`REFUSAL_LOG_INTERVAL_S` (module docstring).

    On a ``grpc.aio`` server of your own, ``await interceptor.aclose()`` once it has
    stopped: it logs the counts of the last interval's refusals, which are otherwise lost
    (:class:`~meshkit.MeshServer` does it for the interceptors it builds). One instance
    serves one event loop at a time (its refusal counts are not locked, its timer runs on
    that loop); servers on other loops or threads each need their own.

    Raises:
        ConfigError: a ``policy`` that is not an :class:`~meshkit.auth.AuthzPolicy` (its
            rules mapping, say: every call would fail), a ``verifier`` without an
            ``identify(auth_context)`` method, a ``trust_domain`` that is not a
            lowercase DNS name (``"spiffe://meshkit.local"``, ``"Meshkit.Local"``), which
            no peer could be of, or, with a ``trust_domain``, an ``allow_peers`` or
            ``deny_peers`` pattern of another trust domain (``spiffe://meshkit.locl/...``:
            it would match no peer, and in a deny list let the peer it names in; each
            quoted).
    """

    def __init__(self, policy: AuthzPolicy, *, verifier: PeerVerifier | None = None,
                 trust_domain: str | None = None) -> None:
        super().__init__()
        check_instance("policy", policy, AuthzPolicy, optional=False)  # else calls crash
        if verifier is not None:
            _check_peer_verifier(verifier)
        self._policy = policy
        # a domain no peer can be of would refuse every peer read here
        self._trust_domain = (None if trust_domain is None
                              else validate_trust_domain(trust_domain))
        if self._trust_domain is not None:
            _check_policy_domain(policy, self._trust_domain)  # a dead deny_peers lets in
        self._verifier = verifier if verifier is not None else default_peer_verifier()
        self._refusals = _refusal_log("authz", ("method", "code", "reason", "peer"))

    # read-only: each method's check holds them from its first call, so a policy assigned
    # later would apply to the methods not called yet alone (the others keeping the old)
    @property
    def policy(self) -> AuthzPolicy:
        """The :class:`~meshkit.auth.AuthzPolicy` (read-only: build another interceptor,
        and server, to change it)."""
        return self._policy

    @property
    def verifier(self) -> PeerVerifier:
        """The verifier of peers this check reads itself (read-only)."""
        return self._verifier

    @property
    def trust_domain(self) -> str | None:
        """The trust domain of peers this check reads itself, or ``None`` (read-only)."""
        return self._trust_domain

    def method_patterns(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The policy's rule keys (checked by :class:`~meshkit.MeshServer` against the
        methods it serves)."""
        return (("AuthzPolicy.rules", tuple(self._policy.rules)),)

    def _before_for(self, method: str) -> Before | None:
        """The policy check for ``method`` (see the class docstring)."""
        policy = self._policy
        refusals = self._refusals
        verifier = self._verifier
        trust_domain = self._trust_domain
        # only subject rules read the claims: a policy without them is judged alike
        # whatever the order, and pays no marking per call
        by_subject = any(r.allow_subjects or r.deny_subjects
                         for r in (*policy.rules.values(), policy.default))

        def before(context: Any) -> Awaitable[None] | None:
            marked = _call_get()  # fresh_identity, inline: the call's first check marks
            if marked is not context:  # the variables as the call's, and clears those
                _call_set(context)  # its task inherited from another call's
                if marked is not None:
                    _forget_identity()
            peer = _peer.get()
            if peer is None:
                peer = verifier.identify(context.auth_context())
                if peer is not None:
                    if trust_domain is not None and peer.trust_domain != trust_domain:
                        # as the peer check: another domain the CA bundle holds
                        refusals.report((method, "PERMISSION_DENIED",
                                         "peer of a foreign trust domain", peer.spiffe_id))
                        foreign: Awaitable[None] = context.abort(
                            _DENIED, f"caller is not allowed to call {method}")
                        return foreign
                    _peer.set(peer)
            claims = _claims.get()
            if claims is None and by_subject:  # told by a token check after this one
                _judged_set(context)
            decision = policy.evaluate(method, peer.spiffe_id if peer else None, claims)
            if decision.allowed:
                return None
            details = ("unauthenticated" if decision.code is _UNAUTH
                       else f"caller is not allowed to call {method}")
            refusals.report((method, decision.code.name, decision.reason,
                             peer.spiffe_id if peer else None), rule=decision.rule)
            aborted: Awaitable[None] = context.abort(decision.code, details)
            return aborted

        return before
