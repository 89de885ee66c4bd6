"""``MessageSigner.from_files`` keeps its pair over files no consumer would accept.

Its reload took any pair that loaded: files rolled back to an expired certificate (a
stale Secret restored), a renewal whose notBefore lies ahead (the issuer's clock ahead),
or another workload's pair (a wrong Secret mounted) were swapped in at once. Every
event signed from then on was refused by consumers ("publisher certificate refused at
the message's send time") and dead-lettered, or went out under another workload's
identity, while the gRPC side of the same workload kept its current pair over the same
files (``TLSOptions`` reloaders refuse exactly these). The signer now keeps its pair,
logs ``message signer reload failed`` and takes the files once they may be taken.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshkit.auth import init_ca_dir, issue_into_dir, load_certificate
from meshkit.messaging import HDR_CERT, MessageSigner, MessageVerifier

pytestmark = pytest.mark.timeout(30)

_ARGS = {"msg_id": "e1", "subject": "orders.placed", "payload": b"{}"}
_TD = "meshkit.test"


def _sign(signer: MessageSigner) -> dict[str, str]:
    headers: dict[str, str] = {}
    signer.sign(headers, **_ARGS)  # type: ignore[arg-type]
    return headers


def _setup(tmp_path: Path, now: dt.datetime) -> tuple[MessageSigner, MessageVerifier, str]:
    init_ca_dir(tmp_path, trust_domain=_TD, ttl_days=3, now=now - dt.timedelta(days=1))
    issue_into_dir(tmp_path, "orderd", ttl_h=24, now=now - dt.timedelta(hours=1))
    signer = MessageSigner.from_dir(tmp_path, "orderd", reload_interval_s=0)
    verifier = MessageVerifier.from_file(tmp_path / "ca.pem", reload_interval_s=None)
    first = _sign(signer)
    assert verifier.verify(first, **_ARGS).service == "orderd"  # type: ignore[arg-type]
    return signer, verifier, first[HDR_CERT]


@pytest.mark.parametrize("case", ["expired", "not_valid_yet"])
def test_a_renewal_outside_its_validity_period_is_not_signed_with(
        tmp_path: Path, case: str) -> None:
    """Files holding a certificate expired (rolled back) or not valid yet (issued 10 min
    ahead) leave the signer on its current pair: consumers go on accepting its events."""
    now = dt.datetime.now(dt.UTC)
    signer, verifier, first = _setup(tmp_path, now)
    issued = (now - dt.timedelta(hours=20)) if case == "expired" else (
        now + dt.timedelta(minutes=10))
    issue_into_dir(tmp_path, "orderd", ttl_h=2, now=issued, overwrite=True)
    headers = _sign(signer)
    kept = headers[HDR_CERT] == first
    assert kept, "signed with the unusable certificate"
    assert verifier.verify(headers, **_ARGS).service == "orderd"  # type: ignore[arg-type]


def test_a_renewal_taken_once_it_becomes_valid(tmp_path: Path) -> None:
    """A renewal not valid yet is read again at later checks and taken once the signer's
    clock reaches its notBefore (the files unchanged meanwhile)."""
    now = dt.datetime.now(dt.UTC)
    clock = [now.timestamp()]
    init_ca_dir(tmp_path, trust_domain=_TD, ttl_days=3, now=now - dt.timedelta(days=1))
    issue_into_dir(tmp_path, "orderd", ttl_h=24, now=now - dt.timedelta(hours=1))
    signer = MessageSigner.from_dir(tmp_path, "orderd", reload_interval_s=0,
                                    clock=lambda: clock[0])
    first = _sign(signer)[HDR_CERT]
    issue_into_dir(tmp_path, "orderd", ttl_h=24, now=now + dt.timedelta(minutes=10),
                   overwrite=True)  # notBefore: now + 5 min (backdated 5 min)
    der = load_certificate(tmp_path / "orderd.pem").public_bytes(serialization.Encoding.DER)
    assert _sign(signer)[HDR_CERT] == first
    clock[0] += 6 * 60
    assert _sign(signer)[HDR_CERT] == base64.b64encode(der).decode()


def test_another_workloads_pair_is_not_signed_with(tmp_path: Path) -> None:
    """userd's key and certificate copied over orderd's files: the signer stays orderd
    (before: its events went out as userd's)."""
    now = dt.datetime.now(dt.UTC)
    signer, verifier, first = _setup(tmp_path, now)
    issue_into_dir(tmp_path, "userd", ttl_h=24, now=now)
    (tmp_path / "orderd.key").write_bytes((tmp_path / "userd.key").read_bytes())
    (tmp_path / "orderd.pem").write_bytes((tmp_path / "userd.pem").read_bytes())
    headers = _sign(signer)
    assert signer.identity.service == "orderd", "the signer became userd"
    kept = headers[HDR_CERT] == first
    assert kept, "signed with userd's certificate"
    assert verifier.verify(headers, **_ARGS).service == "orderd"  # type: ignore[arg-type]


def test_a_valid_renewal_is_still_taken(tmp_path: Path) -> None:
    """The ordinary renewal (same workload, valid now) is signed with at the next check."""
    now = dt.datetime.now(dt.UTC)
    signer, verifier, first = _setup(tmp_path, now)
    issue_into_dir(tmp_path, "orderd", ttl_h=24, now=now, overwrite=True)
    headers = _sign(signer)
    assert headers[HDR_CERT] != first
    assert verifier.verify(headers, **_ARGS).service == "orderd"  # type: ignore[arg-type]
