"""Verified JWT claims as a small immutable value (RFC 7519 §4.1, RFC 8693 §4.2 ``scope``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Claims"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """The claims of a verified access token.

    Attributes:
        subject: ``sub``, e.g. a user id.
        issuer: ``iss``.
        audience: ``aud`` as a tuple (a single string becomes a 1-tuple).
        scopes: ``scope`` split on spaces (RFC 8693 §4.2).
        expires_at: ``exp``, seconds since the epoch.
        issued_at: ``iat``, seconds since the epoch.
        not_before: ``nbf``, seconds since the epoch, or ``None``.
        token_id: ``jti``, or ``None``.
        raw: every claim as decoded (read-only view; includes the above). Compared by
            ``==`` but left out of the hash (claims hash: a set member, a dict key).
    """

    subject: str
    issuer: str
    audience: tuple[str, ...]
    scopes: frozenset[str]
    expires_at: float
    issued_at: float | None = None
    not_before: float | None = None
    token_id: str | None = None
    # compared, but not hashed: a mapping is unhashable, and hash(claims) raised
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)

    def has_scopes(self, required: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
        """Whether every scope in ``required`` was granted."""
        return self.scopes.issuperset(required)
