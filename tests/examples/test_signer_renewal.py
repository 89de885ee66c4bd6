"""The order service's event signer takes a renewed workload certificate
(``events.event_signer``: ``MessageSigner.from_dir``, which reloads it), and the
projection's verifier a rotated CA bundle (``events.event_verifier``).

orderd and ``python -m examples.ecom.outbox_relay`` signed with
``MessageSigner.from_dir``, which reads the certificate once: after a renewal (``meshkit
certs issue orderd --force``, a Secret replaced) the gRPC side reloaded its files but the
events kept the first certificate, and once it expired (24 h by default) the projection
refused every new event ("the certificate has expired") and dead-lettered it.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from examples.ecom.events import event_signer, event_verifier
from meshkit.auth import init_ca_dir, issue_into_dir, load_certificate
from meshkit.messaging import HDR_CERT, MessageSigner, MessageVerifier

pytestmark = pytest.mark.timeout(30)


def _sign(signer: MessageSigner) -> dict[str, str]:
    headers: dict[str, str] = {}
    signer.sign(headers, msg_id="e-1", subject="ecom.orders.placed", payload=b"{}")
    return headers


def _der(path: Path) -> str:
    return base64.b64encode(load_certificate(path).public_bytes(Encoding.DER)).decode()


def test_a_renewed_certificate_is_signed_with_and_a_mismatched_pair_is_not(
        tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    init_ca_dir(tmp_path, trust_domain="meshkit.local", now=now - dt.timedelta(hours=1))
    issue_into_dir(tmp_path, "orderd", ttl_h=2, now=now - dt.timedelta(minutes=30))
    first = _der(tmp_path / "orderd.pem")
    signer = event_signer(tmp_path, "orderd", reload_interval_s=0)
    verifier = MessageVerifier.from_file(tmp_path / "ca.pem")
    assert _sign(signer)[HDR_CERT] == first

    old_key = (tmp_path / "orderd.key").read_bytes()
    issue_into_dir(tmp_path, "orderd", ttl_h=24, overwrite=True)  # the renewal
    renewed = _der(tmp_path / "orderd.pem")
    assert renewed != first
    headers = _sign(signer)
    assert headers[HDR_CERT] == renewed  # before: the first certificate, for ever
    verifier.verify(headers, msg_id="e-1", subject="ecom.orders.placed", payload=b"{}")

    # the next renewal half written: a new certificate beside the old key
    issue_into_dir(tmp_path, "orderd", ttl_h=24, overwrite=True)
    (tmp_path / "orderd.key").write_bytes(old_key)
    headers = _sign(signer)
    assert headers[HDR_CERT] == renewed  # kept: a pair that does not match is not taken
    verifier.verify(headers, msg_id="e-1", subject="ecom.orders.placed", payload=b"{}")


def test_the_projection_verifier_takes_a_rotated_ca_bundle(tmp_path: Path) -> None:
    """A CA rotation: the new CA joins ca.pem, orderd's certificate is reissued from it.
    The verifier made before takes the new bundle (before: every event signed with the
    new certificate refused, 'not issued directly by a CA of the trust bundle', dead-lettered)."""
    old_ca, new_ca = tmp_path / "old", tmp_path / "new"
    init_ca_dir(old_ca, trust_domain="meshkit.local")
    init_ca_dir(new_ca, trust_domain="meshkit.local")
    issue_into_dir(new_ca, "orderd")
    verifier = event_verifier(old_ca, allowed_publishers=(), reload_interval_s=0)
    signer = event_signer(new_ca, "orderd")
    (old_ca / "ca.pem").write_bytes((old_ca / "ca.pem").read_bytes()
                                    + (new_ca / "ca.pem").read_bytes())
    identity = verifier.verify(_sign(signer), msg_id="e-1", subject="ecom.orders.placed",
                               payload=b"{}")
    assert identity.spiffe_id == "spiffe://meshkit.local/svc/orderd"
