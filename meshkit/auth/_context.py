"""Per-call auth context: what meshkit's server interceptors verified, for handlers.

The server interceptors set these context variables inside the wrapped handler, in the
handler's own task, so they are visible to the handler and to anything it awaits or spawns
(tasks copy the context), and never to other calls.
"""

from __future__ import annotations

import contextvars

from meshkit.auth._identity import PeerIdentity
from meshkit.auth._jwt_types import Claims

__all__ = ["current_claims", "current_peer"]

_claims: contextvars.ContextVar[Claims | None] = contextvars.ContextVar(
    "meshkit_auth_claims", default=None
)
_peer: contextvars.ContextVar[PeerIdentity | None] = contextvars.ContextVar(
    "meshkit_auth_peer", default=None
)
_token: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "meshkit_auth_token", default=None
)


def current_claims() -> Claims | None:
    """The verified JWT claims of the call being handled, or ``None``.

    ``None`` when no :class:`~meshkit.auth.JWTAuthInterceptor` ran, the method is public and
    no token came, or outside a handler. Example::

        claims = meshkit.auth.current_claims()
        user_id = claims.subject if claims else None
    """
    return _claims.get()


def current_peer() -> PeerIdentity | None:
    """The verified mTLS peer identity (SPIFFE ID) of the call being handled, or ``None``.

    Set by :class:`~meshkit.auth.PeerIdentityInterceptor` and
    :class:`~meshkit.auth.AuthzInterceptor`; ``None`` on a plaintext server or outside a
    handler.
    """
    return _peer.get()


def peer_spiffe_id() -> str | None:
    """:func:`current_peer`'s SPIFFE ID as a string (``spiffe://trust-domain/path``), or
    ``None``: what telemetry records as the peer identity of a call."""
    peer = _peer.get()
    return None if peer is None else str(peer.spiffe_id)


def current_token() -> str | None:
    """The verified bearer token of the call being handled (for propagation only)."""
    return _token.get()
