"""A bundle CA with an RSA key under 2048 bits vouches for no leaf it signed directly
(review of 0977ea16).

0977ea16 refuses a peer leaf whose RSA key is under 2048 bits (NIST SP 800-131A). A
path through an intermediate CA was already refused when any CA on it has such a key
(cryptography's RFC 5280 path validation: "RSA key is too weak"), but a leaf signed
directly by a bundle CA with a 1024-bit RSA key was identified: anyone who factors that
key mints any workload. That CA now issues nothing, as the path validation has it,
the reason logged.
"""

from __future__ import annotations

import pytest
import structlog

from meshkit.auth import PeerVerifier
from tests.auth.chains import auth_context, foreign_ca, pem, svid

pytestmark = pytest.mark.timeout(60)


def _refusals(logs: list[dict[str, object]]) -> list[str]:
    return [str(e.get("reason")) for e in logs if e.get("event") == "peer certificate refused"]


@pytest.mark.parametrize(("kind", "accepted"),
                         [("rsa", True), ("p256", True), ("rsa1024", False)],
                         ids=["rsa2048", "p256", "rsa1024"])
def test_a_weak_rsa_bundle_ca_vouches_for_no_leaf(kind: str, accepted: bool) -> None:
    """A P-256 leaf signed directly by a bundle CA: identified under an RSA 2048 or
    P-256 CA, refused under an RSA 1024 one (the reason naming the size)."""
    root = foreign_ca("root", kind=kind)
    _key, cert = svid(root, "orderd")
    with structlog.testing.capture_logs() as logs:
        peer = PeerVerifier(pem(root[1])).identify(auth_context(cert))
    if accepted:
        assert peer is not None and peer.service == "orderd"
        return
    assert peer is None
    [reason] = _refusals(logs)
    assert "1024" in reason and "2048" in reason


def test_through_an_intermediate_it_was_refused_already() -> None:
    """The same weak root above an intermediate: refused (the path validation's
    verdict, unchanged): the direct case now agrees with it."""
    root = foreign_ca("weak root", kind="rsa1024")
    inter = foreign_ca("signing CA", issuer=root, path_length=0)
    _key, cert = svid(inter, "orderd")
    assert PeerVerifier(pem(root[1])).identify(auth_context(cert, inter[1])) is None
