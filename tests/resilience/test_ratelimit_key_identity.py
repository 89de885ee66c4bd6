"""by_identity keys a token without a subject by the caller's other identity.

meshkit's verifier accepts a token with no ``sub`` (RFC 7519 makes it optional; OAuth
client-credentials tokens of some issuers carry none) and gives it the subject ``""``.
``by_identity`` keyed every such call ``"sub:"``: all callers with subject-less tokens,
whatever their workload identity or address, shared one budget, so one busy client
spent everyone's limit. A token with no subject names no one: the key is then the
verified SPIFFE ID, else the peer's address, as for a call without a token.
"""

from __future__ import annotations

import contextvars
from typing import Any

import pytest

from meshkit.auth import Claims
from meshkit.auth._context import _claims, _peer
from meshkit.auth._identity import PeerIdentity
from meshkit.resilience.ratelimit import by_identity
from tests.support.ratelimit import PeerContext

METHOD = "/p.S/M"


def _key(subject: Any, spiffe_id: str | None, address: str) -> str:
    def run() -> str:
        _claims.set(Claims(subject=subject, issuer="i", audience=("a",), scopes=frozenset(),
                           expires_at=0.0))
        if spiffe_id is not None:
            _peer.set(PeerIdentity(spiffe_id, "td", spiffe_id.rpartition("/")[2]))
        return by_identity(METHOD, PeerContext(address))  # type: ignore[arg-type]

    return contextvars.Context().run(run)


@pytest.mark.parametrize("subject", ["", None])
def test_a_token_without_a_subject_is_keyed_by_the_other_identity(subject: Any) -> None:
    """Subject-less tokens from two workloads (or two addresses) are two callers."""
    a = _key(subject, "spiffe://td/svc/a", "ipv4:10.0.0.1:5000")
    b = _key(subject, "spiffe://td/svc/b", "ipv4:10.0.0.1:5000")
    assert (a, b) == ("spiffe://td/svc/a", "spiffe://td/svc/b")
    assert _key(subject, None, "ipv4:10.0.0.1:5000") == "10.0.0.1"
    assert _key(subject, None, "ipv4:10.0.0.2:5000") == "10.0.0.2"


def test_a_subject_still_wins() -> None:
    assert _key("alice", "spiffe://td/svc/a", "ipv4:10.0.0.1:5000") == "sub:alice"
