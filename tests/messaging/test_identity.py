"""Message signatures: checked against the mesh CA, bound to id, subject and payload."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import MessageIdentityError, MessageSigner, MessageVerifier
from tests.messaging.conftest import Workloads


def _signed(w: Workloads, who: str = "orderd", payload: bytes = b"{}") -> dict[str, str]:
    cert, key = getattr(w, who)
    headers: dict[str, str] = {}
    MessageSigner(cert, key).sign(headers, msg_id="e1", subject="orders.placed",
                                  payload=payload)
    return headers


def test_signed_message_verifies_to_the_workload(workloads: Workloads) -> None:
    """A message signed by a mesh workload yields its SPIFFE ID."""
    v = MessageVerifier(workloads.ca_pem)
    peer = v.verify(_signed(workloads), msg_id="e1", subject="orders.placed", payload=b"{}")
    assert peer.spiffe_id == "spiffe://meshkit.test/svc/orderd"


@pytest.mark.parametrize("change", ["payload", "msg_id", "subject"])
def test_any_change_breaks_the_signature(workloads: Workloads, change: str) -> None:
    """Changing the payload, the event id or the subject is refused."""
    args = {"msg_id": "e1", "subject": "orders.placed", "payload": b"{}"}
    args[change] = b"{ }" if change == "payload" else "other"
    with pytest.raises(MessageIdentityError, match="signature does not match"):
        MessageVerifier(workloads.ca_pem).verify(_signed(workloads), **args)  # type: ignore[arg-type]


def test_foreign_ca_and_missing_headers_are_refused(workloads: Workloads) -> None:
    """A certificate of another CA, or no identity at all, is refused."""
    v = MessageVerifier(workloads.ca_pem)
    with pytest.raises(MessageIdentityError, match="certificate refused"):
        v.verify(_signed(workloads, "foreign"), msg_id="e1", subject="orders.placed",
                 payload=b"{}")
    with pytest.raises(MessageIdentityError, match="no publisher identity"):
        v.verify({}, msg_id="e1", subject="orders.placed", payload=b"{}")


def test_allowed_publishers(workloads: Workloads) -> None:
    """Only listed publishers pass when a list is given."""
    v = MessageVerifier(workloads.ca_pem,
                        allowed_publishers=("spiffe://meshkit.test/svc/orderd",))
    v.verify(_signed(workloads), msg_id="e1", subject="orders.placed", payload=b"{}")
    with pytest.raises(MessageIdentityError, match="not allowed"):
        v.verify(_signed(workloads, "userd"), msg_id="e1", subject="orders.placed",
                 payload=b"{}")


def test_allowed_publishers_as_one_string_is_refused(workloads: Workloads) -> None:
    """One string was split into one-character patterns, ``"*"`` among them: every
    verified workload (``userd`` here) was admitted. Refused as ``TLSOptions`` does."""
    pattern = "spiffe://meshkit.test/svc/order*"
    with pytest.raises(ConfigError, match="allowed_publishers") as err:
        MessageVerifier(workloads.ca_pem, allowed_publishers=pattern)  # type: ignore[arg-type]
    assert repr(pattern) in str(err.value)


def test_signer_refuses_a_key_of_another_certificate(workloads: Workloads) -> None:
    """A key that does not match the certificate fails at construction."""
    with pytest.raises(ConfigError, match="does not belong"):
        MessageSigner(workloads.orderd[0], workloads.userd[1])
