"""Per-call auth context: what meshkit's server interceptors verified, for handlers.

The server interceptors set these context variables inside the wrapped handler, in the
handler's own task, so they are visible to the handler and to anything it awaits or spawns
(tasks copy the context), and never to other calls. A call's task starts in a copy of the
context its server was started in, which holds the identity of a call when the server
was started from that call's handler (or a task it spawned); so the first of meshkit's
checks to run in a call forgets whatever identity it did not verify for that call
(:data:`_call` tells which call the variables are for).
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
_call: contextvars.ContextVar[object] = contextvars.ContextVar("meshkit_auth_call", default=None)
"""The servicer context of the call the three variables above are for (set by the first
server check of a call, see :func:`fresh_identity`)."""


def fresh_identity(context: object) -> None:
    """Forget the peer, claims and token current in the call of servicer context
    ``context`` unless a check of this call set them: each of meshkit's server checks
    does it first (inline, as here). The first one in a call marks the variables as the
    call's (:data:`_call`) and clears those its task inherited when the context it
    started in was another call's (a server started from that call's handler, or from a
    task it spawned), which holds that call's mark, since every check marks before it
    sets an identity. A call whose task started without meshkit's variables (every
    :class:`~meshkit.MeshServer` call: it starts its server in such a context) has no
    mark and nothing to clear: its first check costs a context-variable read, a
    comparison and a write; each later one a read and a comparison."""
    marked = _call.get()
    if marked is not context:
        _call.set(context)
        if marked is not None:
            _forget_identity()


def _forget_identity() -> None:
    """Clear the peer, claims and token (inherited from another call's context)."""
    _peer.set(None)
    _claims.set(None)
    _token.set(None)


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
    :class:`~meshkit.auth.AuthzInterceptor`; ``None`` on a plaintext server, outside a
    handler, and on an mTLS server where neither read the peer: a method exempt from the
    peer check (``AuthOptions.exempt_methods``), or ``check_peers=False``, without a
    ``policy`` (which reads the peer itself). ``None`` is no proof the caller has no
    certificate: authorize on it as on an unknown caller.
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
