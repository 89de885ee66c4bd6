"""A peer refused for a validity period says which certificate and when.

``PeerVerifier`` refused an expired or not yet valid peer certificate (or bundle CA)
with "the certificate has expired" / "the CA certificate is not valid yet" alone: the
``peer certificate refused`` warning (and ``verify()``'s error, and every message
verifier's) gave no date and, for a CA, not which of the bundle's. A peer on a
long-lived connection whose certificate ran out, or a clock off by hours, then had the
operator decoding certificates by hand. The reasons now carry the bound crossed (UTC)
and the CA's subject; their old wording stays their start.
"""

from __future__ import annotations

import datetime as dt

import pytest
import structlog

from meshkit.auth import CertificateError, PeerVerifier, create_ca
from tests.auth.chains import auth_context, leaf, pem
from tests.auth.conftest import TD

pytestmark = pytest.mark.timeout(30)

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _z(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%S}Z"


def test_an_expired_peer_certificate_names_its_notafter() -> None:
    key, ca = create_ca(trust_domain=TD, ttl_days=30, now=T0)
    _, cert = leaf(key, ca, not_before=T0 + dt.timedelta(days=1), ttl_h=24)
    after = (T0 + dt.timedelta(days=3)).timestamp()
    with pytest.raises(CertificateError, match="the certificate has expired") as err:
        PeerVerifier(pem(ca)).verify(cert, at=after)
    assert _z(cert.not_valid_after_utc) in str(err.value)
    v = PeerVerifier(pem(ca), clock=lambda: after)
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(cert)) is None
    reasons = [str(e["reason"]) for e in logs if e["event"] == "peer certificate refused"]
    assert len(reasons) == 1 and _z(cert.not_valid_after_utc) in reasons[0], logs


def test_a_peer_certificate_not_valid_yet_names_its_notbefore() -> None:
    key, ca = create_ca(trust_domain=TD, ttl_days=30, now=T0)
    _, cert = leaf(key, ca, not_before=T0 + dt.timedelta(days=2), ttl_h=24)
    with pytest.raises(CertificateError, match="the certificate is not valid yet") as err:
        PeerVerifier(pem(ca)).verify(cert, at=(T0 + dt.timedelta(days=1)).timestamp())
    assert _z(cert.not_valid_before_utc) in str(err.value)


@pytest.mark.parametrize("period", ["expired", "not-valid-yet"], ids=["expired", "early"])
def test_a_bundle_ca_out_of_its_period_is_named_with_its_date(period: str) -> None:
    key, ca = create_ca(trust_domain=TD, ttl_days=30, now=T0)
    _, cert = leaf(key, ca, not_before=T0 + dt.timedelta(days=1), ttl_h=24 * 60)
    if period == "expired":
        at, bound, words = T0 + dt.timedelta(days=40), ca.not_valid_after_utc, "has expired"
    else:
        at, bound, words = T0 - dt.timedelta(days=1), ca.not_valid_before_utc, "is not valid yet"
        _, cert = leaf(key, ca, not_before=T0 - dt.timedelta(days=2), ttl_h=24 * 60)
    with pytest.raises(CertificateError, match=f"the CA certificate {words}") as err:
        PeerVerifier(pem(ca)).verify(cert, at=at.timestamp())
    assert _z(bound) in str(err.value)
    assert ca.subject.rfc4514_string() in str(err.value)
