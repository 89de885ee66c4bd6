"""The server chain in the documented order: peer (mTLS) → JWT → authorization."""

from __future__ import annotations

import grpc

from meshkit.auth._authz import AuthzPolicy
from meshkit.auth._jwt import JWTAuthOptions, JWTVerifier
from meshkit.auth._server import AuthzInterceptor, JWTAuthInterceptor
from meshkit.auth._tls import TLSOptions

__all__ = ["server_interceptors"]


def server_interceptors(
    *,
    tls: TLSOptions | None = None,
    verifier: JWTVerifier | None = None,
    jwt_options: JWTAuthOptions | None = None,
    policy: AuthzPolicy | None = None,
    exempt_methods: tuple[str, ...] = (),
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """The auth interceptors for ``ServeOptions.interceptors``, in chain order.

    Order: :class:`PeerIdentityInterceptor` (when ``tls``), then
    :class:`JWTAuthInterceptor` (when ``verifier``), then :class:`AuthzInterceptor` (when
    ``policy``). Put rate limiting after them and tracing/metrics before them.

    Args:
        tls: the server's :class:`TLSOptions` (``allowed_peers`` enforced).
        verifier: a :class:`JWTVerifier`; ``jwt_options`` says which methods are public
            and which scopes they need (default: every method needs a token, no scopes).
        policy: the :class:`AuthzPolicy`.
        exempt_methods: methods the peer check skips (e.g. ``/grpc.health.v1.Health/Check``
            for a plaintext prober; the server must still accept the connection).

    Raises:
        ConfigError: ``jwt_options`` without a ``verifier``.
    """
    from meshkit.errors import ConfigError

    if jwt_options is not None and verifier is None:
        raise ConfigError("jwt_options given without a verifier")
    chain: list[grpc.aio.ServerInterceptor] = []
    if tls is not None:
        chain.append(tls.peer_interceptor(exempt_methods=exempt_methods))
    if verifier is not None:
        chain.append(JWTAuthInterceptor(verifier, jwt_options))
    if policy is not None:
        chain.append(AuthzInterceptor(policy))
    return tuple(chain)
