"""Message signatures: checked against the mesh CA, bound to id, subject and payload."""

from __future__ import annotations

import datetime as dt

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


def _signed_at(w: Workloads, at_s: float, who: str = "orderd") -> dict[str, str]:
    cert, key = getattr(w, who)
    headers: dict[str, str] = {}
    MessageSigner(cert, key, clock=lambda: at_s).sign(
        headers, msg_id="e1", subject="orders.placed", payload=b"{}")
    return headers


def _verify(v: MessageVerifier, headers: dict[str, str]) -> str:
    return v.verify(headers, msg_id="e1", subject="orders.placed", payload=b"{}").spiffe_id


def test_the_certificate_is_checked_at_the_signed_send_time(workloads: Workloads) -> None:
    """A message signed while its publisher's certificate was valid verifies after the
    certificate expired (it was refused: checked at the time of the check, a consumer
    catching up after an outage dead-lettered validly signed events); one signed (with
    the same key) after the expiry or before the validity began is refused, also when
    the certificate's verdict is cached from a message signed within it."""
    cert = workloads.orderd[0]
    not_before = cert.not_valid_before_utc.timestamp()
    expiry = cert.not_valid_after_utc.timestamp()
    now = expiry + 3600.0  # an hour after the certificate expired
    v = MessageVerifier(workloads.ca_pem, clock=lambda: now)
    for sent in (expiry - 60.0, not_before + 60.0, expiry - 1.0):
        assert _verify(v, _signed_at(workloads, sent)).endswith("/svc/orderd")
    for sent in (expiry + 60.0, not_before - 60.0):
        with pytest.raises(MessageIdentityError, match="certificate refused at the "
                           "message's send time"):
            _verify(v, _signed_at(workloads, sent))
    fresh = MessageVerifier(workloads.ca_pem, clock=lambda: now)
    with pytest.raises(MessageIdentityError, match="not valid yet"):
        _verify(fresh, _signed_at(workloads, not_before - 60.0))


def test_a_message_older_than_max_message_age_s_is_refused(workloads: Workloads) -> None:
    """The send time is bounded: older than ``max_message_age_s`` (7 days by default;
    the window in which a stolen key of an expired certificate could still sign
    backdated messages) is refused with that reason; ``None`` lifts the bound."""
    cert = workloads.orderd[0]
    sent = cert.not_valid_after_utc.timestamp() - 60.0
    headers = _signed_at(workloads, sent)
    week = 7 * 24 * 3600.0
    assert _verify(MessageVerifier(workloads.ca_pem, clock=lambda: sent + week - 1.0),
                   headers)
    with pytest.raises(MessageIdentityError,
                       match=r"older than max_message_age_s \(604800 s\): sent 604801 s ago"):
        _verify(MessageVerifier(workloads.ca_pem, clock=lambda: sent + week + 1.0), headers)
    with pytest.raises(MessageIdentityError, match=r"max_message_age_s \(3600 s\)"):
        _verify(MessageVerifier(workloads.ca_pem, max_message_age_s=3600,
                                clock=lambda: sent + 3601.0), headers)
    assert _verify(MessageVerifier(workloads.ca_pem, max_message_age_s=None,
                                   clock=lambda: sent + 400 * 24 * 3600.0), headers)


def test_a_send_time_in_the_future_or_malformed_is_refused(workloads: Workloads) -> None:
    """A send time more than 60 s ahead of the verifier's clock is refused (a publisher's
    clock a little ahead is not); a malformed one too, before any certificate check."""
    cert = workloads.orderd[0]
    now = cert.not_valid_before_utc.timestamp() + 3600.0
    v = MessageVerifier(workloads.ca_pem, clock=lambda: now)
    assert _verify(v, _signed_at(workloads, now + 30.0))
    with pytest.raises(MessageIdentityError, match="120 s in the future"):
        _verify(v, _signed_at(workloads, now + 120.0))
    for bad in ("-1", "1.5", "\u0661\u0662\u0663", "9" * 16, "12 "):
        headers = _signed_at(workloads, now)
        headers["Meshkit-Sent-At-Ms"] = bad
        with pytest.raises(MessageIdentityError, match="malformed Meshkit-Sent-At-Ms"):
            _verify(v, headers)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "7d", True])
def test_max_message_age_s_out_of_range_is_refused(workloads: Workloads, bad: object) -> None:
    """max_message_age_s is a finite number of seconds > 0 or None."""
    with pytest.raises(ConfigError, match="max_message_age_s") as err:
        MessageVerifier(workloads.ca_pem, max_message_age_s=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)


def test_a_cached_verdict_does_not_outlive_the_ca() -> None:
    """A consumer verifies signed messages with ``MessageVerifier(ca_pem)``; its bundle
    CA certificate expires at day 30 while the publisher's leaf (issued by a renewed
    certificate of the same CA key, or by an issuer letting a leaf outlive its CA) runs
    to day 30.5. Before: a message signed at day 30 + 2 h was refused by a fresh
    verifier ("the CA certificate has expired") but accepted by one that had checked an
    earlier message of the same certificate (``_known`` cached the verdict until the
    *leaf's* notAfter). Now the cache holds only while every certificate of the path is
    valid: both refuse it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from meshkit.auth import create_ca, issue_workload

    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    key, old = create_ca(trust_domain="example.org", ttl_days=30, now=t0)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(t0).not_valid_after(t0 + dt.timedelta(days=400)))
    for ext in old.extensions:  # the same CA renewed with its key
        builder = builder.add_extension(ext.value, ext.critical)
    renewed = builder.sign(key, hashes.SHA256())
    leaf_key, leaf = issue_workload(key, renewed, "orderd", ttl_h=24,
                                    now=t0 + dt.timedelta(days=29, hours=12))
    early = (t0 + dt.timedelta(days=29, hours=13)).timestamp()  # the CA still valid
    late = (t0 + dt.timedelta(days=30, hours=2)).timestamp()  # the CA expired 2 h ago

    def signed(at: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        MessageSigner(leaf, leaf_key, clock=lambda: at).sign(
            headers, msg_id="e1", subject="orders.placed", payload=b"{}")
        return headers

    ca_pem = old.public_bytes(serialization.Encoding.PEM)
    now = [early]
    warm = MessageVerifier(ca_pem, clock=lambda: now[0])
    assert _verify(warm, signed(early)).endswith("/svc/orderd")
    now[0] = late
    fresh = MessageVerifier(ca_pem, clock=lambda: late)
    for v in (fresh, warm):
        with pytest.raises(MessageIdentityError, match="the CA certificate has expired"):
            _verify(v, signed(late))
    assert _verify(warm, signed(early)).endswith("/svc/orderd")  # still signed in time
