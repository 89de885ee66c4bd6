"""Server authentication and authorization for :func:`meshkit.serve`: :class:`AuthOptions`.

``ServeOptions(auth=AuthOptions(...))`` installs the checks in the one documented order:
peer identity (mTLS, ``tls.allowed_peers``) → JWT (token, scopes) → authorization policy.
:class:`meshkit.MeshServer` places them in the whole server chain (see
:mod:`meshkit.server`); nothing else orders them.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit._config import check_bool, check_instance, check_strings
from meshkit._handlers import WrappingInterceptor
from meshkit._methods import MethodMatcher
from meshkit.auth._authz import AuthzPolicy
from meshkit.auth._jwt import JWTAuthOptions, JWTVerifier
from meshkit.auth._server import AuthzInterceptor, JWTAuthInterceptor, check_token_verifier
from meshkit.auth._tls import TLSOptions
from meshkit.errors import ConfigError

__all__ = ["AuthOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthOptions:
    """Who may call a server, for ``ServeOptions(auth=...)``.

    Every method the server serves is checked, ``grpc.health.v1.Health`` and reflection
    included (nothing is exempt by default): with a ``verifier``, a Kubernetes gRPC probe
    or a Consul ``check="grpc"`` on a plaintext server is refused ``UNAUTHENTICATED``
    unless ``JWTAuthOptions(public_methods=(...))`` opens it (and, with a ``policy``, a
    rule with ``allow_anonymous=True``). Name the health methods one by one,
    ``"/grpc.health.v1.Health/Check"``, ``".../Watch"`` and ``".../List"``, not
    ``"/grpc.health.v1.Health/*"``: with a catch-all generic handler the glob opens any
    name under the service (``/grpc.health.v1.Health/Anything``) as well.

    Args:
        verifier: a :class:`~meshkit.auth.JWTVerifier`; with it every method needs a valid
            bearer token (``UNAUTHENTICATED`` otherwise) unless ``jwt`` makes it public.
            One of your own refuses a token by raising
            :class:`~meshkit.auth.UnauthenticatedError` or
            :class:`~meshkit.auth.PermissionDeniedError` (that status and details); any
            other exception, or a result that is no :class:`~meshkit.auth.Claims`
            (``None``) or whose ``scopes`` are no collection of strings (a string), is
            ``UNAUTHENTICATED`` "token could not be verified"; scopes as a list or a
            tuple are taken as the frozenset they make.
        jwt: :class:`~meshkit.auth.JWTAuthOptions`: public methods and required scopes
            (``PERMISSION_DENIED`` when a scope is missing); needs ``verifier``.
        policy: an :class:`~meshkit.auth.AuthzPolicy` over peer identities and token claims
            (``PERMISSION_DENIED`` when it denies). Where the peer check did not run (a
            method in ``exempt_methods``, or ``check_peers=False``) the policy reads the
            peer itself, with ``tls``' verifier, and refuses a peer of a trust domain
            other than ``tls``' (one more the CA bundle holds) ``PERMISSION_DENIED``, as
            the peer check would, whatever its rules say.
        check_peers: with mTLS, refuse peers that are not mesh workloads
            (``UNAUTHENTICATED``: no verified workload identity) or that are of a foreign
            trust domain or not in ``tls.allowed_peers`` (``PERMISSION_DENIED``), as
            :class:`~meshkit.auth.PeerIdentityInterceptor` does (default ``True``);
            ``False`` with ``tls.allowed_peers`` is a ``ConfigError`` when the server is
            built (:meth:`interceptors`), as the list would be enforced by nothing.
        exempt_methods: methods the peer check skips, e.g. the health methods by name,
            ``("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
            "/grpc.health.v1.Health/List")``, for a prober (not ``Health/*``, which a
            catch-all handler would serve any name under; the connection must still be
            accepted); the peer check alone:
            the token and the policy still apply to them (``JWTAuthOptions(
            public_methods=...)``, ``Rule(allow_anonymous=True)`` open a method).

    Raises:
        ConfigError: a ``verifier`` that is neither a ``JWTVerifier`` nor has an async
            ``verify(token)`` (a ``VerifierOptions`` or a ``TokenVerifier`` given for it,
            a class, an object whose ``verify`` is a plain sync function; a sync wrapper
            of an async one, or a compiled one, is taken), a ``jwt`` that is
            not a ``JWTAuthOptions``, a ``policy`` that is not an ``AuthzPolicy`` (its
            rules mapping, say), ``jwt`` without a ``verifier``, a ``policy`` with
            ``allow_subjects`` or ``deny_subjects`` but no ``verifier`` (no call would
            have claims: a ``deny_subjects`` would refuse no one; the rule's key, or
            ``'default'``, quoted), nothing to check at all
            (no ``verifier``, no ``policy`` and ``check_peers=False``), ``exempt_methods``
            given as one string or not a collection of strings (``None``), a bad
            ``exempt_methods`` pattern (quoted), or ``exempt_methods`` with
            ``check_peers=False`` (exempt from no check: they would still need the token
            and pass the policy).
    """

    verifier: JWTVerifier | None = None
    jwt: JWTAuthOptions | None = None
    policy: AuthzPolicy | None = None
    check_peers: bool = True
    exempt_methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_bool("check_peers", self.check_peers)
        if self.verifier is not None:
            check_token_verifier(self.verifier)
        check_instance("jwt", self.jwt, JWTAuthOptions)
        check_instance("policy", self.policy, AuthzPolicy)
        if self.jwt is not None and self.verifier is None:
            raise ConfigError("AuthOptions(jwt=...) needs a verifier")
        if self.policy is not None and self.verifier is None:
            for key, rule in (*self.policy.rules.items(), ("default", self.policy.default)):
                if rule.allow_subjects or rule.deny_subjects:
                    raise ConfigError(
                        f"AuthOptions(policy=...): the rule {key!r} matches token subjects, "
                        "which only a verifier yields: without one no call has claims "
                        "(deny_subjects would refuse no one); give a verifier or drop them")
        if self.verifier is None and self.policy is None and not self.check_peers:
            raise ConfigError("AuthOptions has nothing to check: give a verifier, a policy "
                              "or check_peers=True (or use auth=None)")
        object.__setattr__(self, "exempt_methods",
                           check_strings("exempt_methods", self.exempt_methods))
        MethodMatcher.of(self.exempt_methods, where="exempt_methods")  # validates now
        if self.exempt_methods and not self.check_peers:
            # exempt from nothing: the token and the policy still apply to them
            raise ConfigError(
                f"AuthOptions(exempt_methods={self.exempt_methods!r}) exempts methods from "
                "the peer check alone, which check_peers=False turns off: they would be "
                "exempt from nothing (the token and the policy still apply); open a method "
                "with JWTAuthOptions(public_methods=...) and Rule(allow_anonymous=True)")

    def interceptors(self, tls: TLSOptions | None) -> tuple[WrappingInterceptor, ...]:
        """The checks in chain order for a server with ``tls`` (``None``: no peer check).

        Raises:
            ConfigError: ``tls.allowed_peers`` with ``check_peers=False``: the peer check
                enforces that list, and without it every workload of the trust domain
                would get in (drop one or the other, or list the peers in the policy);
                a ``policy`` peer pattern of a trust domain other than ``tls``' (it would
                match no peer: :class:`~meshkit.auth.AuthzInterceptor`).
        """
        if tls is not None and tls.allowed_peers and not self.check_peers:
            raise ConfigError(
                f"TLSOptions(allowed_peers={tls.allowed_peers!r}) is enforced by the peer "
                "check, which AuthOptions(check_peers=False) turns off: every workload of "
                "the trust domain would get in; drop one of them (or put the peers in the "
                "policy's allow_peers)")
        chain: list[WrappingInterceptor] = []
        if tls is not None and self.check_peers:
            chain.append(tls.peer_interceptor(exempt_methods=self.exempt_methods))
        if self.verifier is not None:
            chain.append(JWTAuthInterceptor(self.verifier, self.jwt))
        if self.policy is not None:
            # the policy reads the peer itself where the peer check did not run (exempt
            # methods, check_peers=False): with the bundle's verifier, as the check would
            # (and refuses another trust domain of the bundle, as the check would)
            chain.append(AuthzInterceptor(
                self.policy, verifier=None if tls is None else tls.peer_verifier(),
                trust_domain=None if tls is None else tls.domain))
        return tuple(chain)
