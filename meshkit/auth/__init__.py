"""meshkit.auth: workload identity (mTLS, SPIFFE), JWT access tokens, authorization.

**Identities.** Every workload has an X.509-SVID (SPIFFE X.509-SVID standard) issued by the
mesh CA (``meshkit certs init`` / ``meshkit certs issue <service>``, or
:func:`create_ca` / :func:`issue_workload`): URI SAN ``spiffe://<td>/svc/<service>``
plus the DNS *identity name* ``<service>.svc.<td>``. Servers require client certificates
and read the caller's verified SPIFFE ID from the call (:func:`current_peer`); clients
verify the server's identity as its TLS host name (:meth:`TLSOptions.channel_options` sets
``grpc.ssl_target_name_override``) because grpcio's Python API has no verify callback.
The CA's name constraints keep both names inside the trust domain. ``serve()`` refuses,
when built, a certificate that is not the served workload's own (another workload's, or
a SPIRE SVID without the identity DNS name): :func:`check_server_identity`. A certificate
from another CA, an expired one, a wrong identity or a plaintext client fail the
handshake (``UNAVAILABLE`` at the caller); plaintext exists only when asked for with
``tls_from_dir(..., insecure=True)``.

**Chains the CA forbids.** The mesh CA is ``CA:TRUE, pathlen:0``, but grpcio's BoringSSL
does not apply a trust anchor's path length. So :class:`PeerIdentityInterceptor`
re-verifies each client certificate with a :class:`PeerVerifier`
(:meth:`TLSOptions.peer_verifier`, over ``ca_file``, reloaded with it; verdicts cached
per certificate, about 4 µs per call with grpc's ``auth_context()``): the leaf must be
issued by a CA of the bundle, directly or through intermediate CAs the peer presented
(SPIRE under an upstream root; RFC 5280 path validation by ``cryptography``, every CA's
pathlen applied, the anchor's included), within every CA's basicConstraints, keyUsage
and name constraints, not a CA itself, with exactly one SPIFFE ID that is a workload ID
``spiffe://<td>/svc/<service>`` (``/svc/orderd/extra`` is no workload). Anything else is
``UNAUTHENTICATED`` ("no verified peer identity") and logged once per certificate
(``peer certificate refused``). :meth:`AuthOptions.interceptors` gives the policy's own
peer read (a method exempt from the peer check, or ``check_peers=False``) the TLS
bundle's verifier, as the peer check uses; only a hand-built
``AuthzInterceptor(policy)`` without ``verifier=`` falls back to
:func:`default_peer_verifier`, which refuses a peer that presented an intermediate CA.
**Client side, not covered:** grpcio
exposes neither the server's certificate nor a verify hook to Python clients, so a
server certificate issued through a sub-CA signed with the mesh CA key is accepted by
clients (within the CA's name constraints, which BoringSSL enforces). Only the CA key
can make one and ``meshkit certs`` never does: keep the CA key offline. (Why a client's
handshake fails is diagnosed, not checked, out of band: a channel dialed with ``tls``
probes an endpoint whose sub-channel goes ``TRANSIENT_FAILURE`` with Python's ``ssl`` and
reports the reason in ``EndpointStats.connect_error``, the status of a call no endpoint
can take and one warning: :mod:`meshkit.auth._probe`.)

Patterns (``allowed_peers``, :class:`Rule`): ``*`` matches any run of characters except
``/``; ``"*"`` alone matches every verified identity. Methods (``JWTAuthOptions.
public_methods``/``method_scopes``, :class:`AuthzPolicy` keys) are method patterns
(:mod:`meshkit._methods`): ``"/ecom.v1.UserService/GetUser"``, ``"UserService/GetUser"``,
``"UserService/*"``, ``"*"``; exact beats the longest glob, which beats the default.

**Tokens.** :class:`TokenIssuer` mints ES256/EdDSA access tokens (RFC 9068 shape: ``iss sub
aud exp iat nbf jti scope``, ``kid`` header) from a :class:`KeySet`; :class:`JWKSServer`
publishes the keys at ``/.well-known/jwks.json``; :class:`JWKSClient` caches them for
:class:`JWTVerifier` (algorithms fixed by config, RFC 8725). :class:`JWTAuthInterceptor`
reads ``authorization: Bearer <token>``: missing/invalid → ``UNAUTHENTICATED``, valid but
missing a scope → ``PERMISSION_DENIED``; handlers read :func:`current_claims`.
:class:`TokenForwarder` forwards the caller's token on calls made while handling it.

**Rotation.** Servers pick renewed certificate files up for new connections within
``reload_interval_s`` (``grpc.dynamic_ssl_server_credentials``); clients rebuild when
:class:`ChannelCredentialsReloader` bumps its ``generation``. JWT keys rotate with
:meth:`KeySet.rotate`: the ``keep_previous`` newest previous keys stay published, and
beyond them any key this key set's :class:`TokenIssuer` signed with, until that token's
``exp`` + ``grace_s`` (keys loaded from files go by count alone); verifiers
fetch the JWKS again on an unknown ``kid`` (at most every ``min_refresh_interval_s``) and
every ``refresh_interval_s``.

**Chain order.** ``ServeOptions(auth=AuthOptions(...))``: the server chain is telemetry →
deadline admission → authn (:class:`PeerIdentityInterceptor`, then
:class:`JWTAuthInterceptor`) → authz (:class:`AuthzInterceptor`) → rate limit → your
interceptors → handler, fixed by :mod:`meshkit.server`. The checks run inside the wrapped
handler (they need the call's ``context``). Client: ``TokenForwarder`` goes in
``DialOptions.interceptors``.

Example::

    tls = tls_from_dir("certs", "userd")
    verifier = JWTVerifier(VerifierOptions(issuer="userd", audience="ecom"),
                           JWKSClient("http://127.0.0.1:8081/.well-known/jwks.json"))
    policy = AuthzPolicy(rules={"/ecom.v1.UserService/GetUser": Rule(
        allow_peers=(tls.expected_server_id("orderd"),))})
    opts = ServeOptions(tls=tls, auth=AuthOptions(verifier=verifier, policy=policy))
    # ... and when the server has drained: await verifier's JWKSClient.close() (a
    # refresh in flight), or use it as ``async with JWKSClient(url) as jwks``
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import meshkit._log  # noqa: F401  (meshkit's loggers quiet until logging is configured)
from meshkit._lazy import first_read_lock

if TYPE_CHECKING:
    from meshkit.auth._authz import AuthzPolicy, Decision, Rule
    from meshkit.auth._certs import (
        CertificateInfo,
        WorkloadFiles,
        create_ca,
        describe_certificate,
        init_ca_dir,
        issue_into_dir,
        issue_workload,
        load_certificate,
        load_private_key,
        load_workload_key,
        write_certificate,
        write_private_key,
    )
    from meshkit.auth._chain import AuthOptions
    from meshkit.auth._context import current_claims, current_peer
    from meshkit.auth._errors import (
        AuthError,
        CertificateError,
        InvalidTokenError,
        JWKSError,
        KeyExistsError,
        PermissionDeniedError,
        UnauthenticatedError,
    )
    from meshkit.auth._identity import (
        DEFAULT_TRUST_DOMAIN,
        IdentityMatcher,
        PeerIdentity,
        PeerVerifier,
        SpiffeId,
        default_peer_verifier,
        identity_dns_name,
        workload_id,
    )
    from meshkit.auth._jwks import JWKSClient, JWKSClientOptions, JWKSServer, parse_jwks
    from meshkit.auth._jwt import (
        IssuerOptions,
        JWTAuthOptions,
        JWTVerifier,
        KeySet,
        KeySource,
        SigningKey,
        TokenIssuer,
        TokenVerifier,
        VerificationKey,
        VerifiedTokenCache,
        VerifierOptions,
        extract_bearer,
    )
    from meshkit.auth._jwt_types import Claims
    from meshkit.auth._propagation import TokenForwarder
    from meshkit.auth._server import AuthzInterceptor, JWTAuthInterceptor, PeerIdentityInterceptor
    from meshkit.auth._tls import (
        ChannelCredentialsReloader,
        TLSMaterial,
        TLSOptions,
        check_server_identity,
        tls_from_dir,
    )

# Where each public name lives. ``import meshkit.auth`` (or of any of its submodules, such
# as ``meshkit.auth.cli``) loads none of them: a name's module is imported when the name is
# first read (PEP 562), so a program pays for the parts it uses (certificates alone need
# neither grpc's interceptors, aiohttp nor PyJWT). The one side effect a caller relies on,
# the quiet logging default, is ``meshkit._log``'s (above).
_LAZY = {
    **dict.fromkeys(("AuthzPolicy", "Decision", "Rule"), "meshkit.auth._authz"),
    **dict.fromkeys(("CertificateInfo", "WorkloadFiles", "create_ca", "describe_certificate",
                     "init_ca_dir", "issue_into_dir", "issue_workload", "load_certificate",
                     "load_private_key", "load_workload_key", "write_certificate",
                     "write_private_key"), "meshkit.auth._certs"),
    **dict.fromkeys(("AuthOptions",), "meshkit.auth._chain"),
    **dict.fromkeys(("current_claims", "current_peer"), "meshkit.auth._context"),
    **dict.fromkeys(("AuthError", "CertificateError", "InvalidTokenError", "JWKSError",
                     "KeyExistsError", "PermissionDeniedError", "UnauthenticatedError"),
                    "meshkit.auth._errors"),
    **dict.fromkeys(("DEFAULT_TRUST_DOMAIN", "IdentityMatcher", "PeerIdentity", "PeerVerifier",
                     "SpiffeId", "default_peer_verifier", "identity_dns_name", "workload_id"),
                    "meshkit.auth._identity"),
    **dict.fromkeys(("JWKSClient", "JWKSClientOptions", "JWKSServer", "parse_jwks"),
                    "meshkit.auth._jwks"),
    **dict.fromkeys(("IssuerOptions", "JWTAuthOptions", "JWTVerifier", "KeySet", "KeySource",
                     "SigningKey", "TokenIssuer", "TokenVerifier", "VerificationKey",
                     "VerifiedTokenCache", "VerifierOptions", "extract_bearer"),
                    "meshkit.auth._jwt"),
    **dict.fromkeys(("Claims",), "meshkit.auth._jwt_types"),
    **dict.fromkeys(("TokenForwarder",), "meshkit.auth._propagation"),
    **dict.fromkeys(("AuthzInterceptor", "JWTAuthInterceptor", "PeerIdentityInterceptor"),
                    "meshkit.auth._server"),
    **dict.fromkeys(("ChannelCredentialsReloader", "TLSMaterial", "TLSOptions",
                     "check_server_identity", "tls_from_dir"), "meshkit.auth._tls"),
}

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "AuthError",
    "AuthOptions",
    "AuthzInterceptor",
    "AuthzPolicy",
    "CertificateError",
    "CertificateInfo",
    "ChannelCredentialsReloader",
    "Claims",
    "Decision",
    "IdentityMatcher",
    "InvalidTokenError",
    "IssuerOptions",
    "JWKSClient",
    "JWKSClientOptions",
    "JWKSError",
    "JWKSServer",
    "JWTAuthInterceptor",
    "JWTAuthOptions",
    "JWTVerifier",
    "KeyExistsError",
    "KeySet",
    "KeySource",
    "PeerIdentity",
    "PeerIdentityInterceptor",
    "PeerVerifier",
    "PermissionDeniedError",
    "Rule",
    "SigningKey",
    "SpiffeId",
    "TLSMaterial",
    "TLSOptions",
    "TokenForwarder",
    "TokenIssuer",
    "TokenVerifier",
    "UnauthenticatedError",
    "VerificationKey",
    "VerifiedTokenCache",
    "VerifierOptions",
    "WorkloadFiles",
    "check_server_identity",
    "create_ca",
    "current_claims",
    "current_peer",
    "default_peer_verifier",
    "describe_certificate",
    "extract_bearer",
    "identity_dns_name",
    "init_ca_dir",
    "issue_into_dir",
    "issue_workload",
    "load_certificate",
    "load_private_key",
    "load_workload_key",
    "parse_jwks",
    "tls_from_dir",
    "workload_id",
    "write_certificate",
    "write_private_key",
]


if not TYPE_CHECKING:
    # Hidden from type checkers: to them a module __getattr__ makes every name exist (as
    # Any), so a misspelled import would pass; they see the names imported above.

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'meshkit.auth' has no attribute {name!r}")
        with first_read_lock():
            value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # read once: later reads are plain module attributes
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
