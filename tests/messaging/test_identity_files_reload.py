"""``MessageSigner.from_files``/``from_dir`` and ``MessageVerifier.from_file`` take renewed files.

They read their files once: a long-running publisher went on signing with its first
workload certificate after it was renewed, and once that certificate expired (24 h by
default) every consumer refused its new events ("certificate refused at the message's
send time": dead letters); a consumer kept its first CA bundle after a CA rotation and
refused every event signed under the new CA until restarted. Both now look at their
files at most every ``reload_interval_s`` seconds (default 5; 0 here: every use) and load
them again when they changed; a pair that does not load keeps the old one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshkit.auth import create_ca, issue_workload, write_certificate, write_private_key
from meshkit.messaging import MessageIdentityError, MessageSigner, MessageVerifier

pytestmark = pytest.mark.timeout(30)

_ARGS = {"msg_id": "e1", "subject": "orders.placed", "payload": b"{}"}


def _pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]


def test_the_signer_takes_a_renewed_certificate(tmp_path: Path) -> None:
    ca_key, ca = create_ca(trust_domain="meshkit.test")
    key, cert = issue_workload(ca_key, ca, "orderd")
    write_private_key(tmp_path / "orderd.key", key)
    write_certificate(tmp_path / "orderd.pem", cert)
    signer = MessageSigner.from_dir(tmp_path, "orderd", reload_interval_s=0)
    h1: dict[str, str] = {}
    signer.sign(h1, **_ARGS)  # type: ignore[arg-type]
    key2, cert2 = issue_workload(ca_key, ca, "orderd")  # the renewal
    write_private_key(tmp_path / "orderd.key", key2, overwrite=True)
    write_certificate(tmp_path / "orderd.pem", cert2, overwrite=True)
    h2: dict[str, str] = {}
    signer.sign(h2, **_ARGS)  # type: ignore[arg-type]
    assert h2["Meshkit-Cert"] != h1["Meshkit-Cert"]
    MessageVerifier(_pem(ca)).verify(h2, **_ARGS)  # type: ignore[arg-type]


def test_a_pair_that_does_not_match_yet_keeps_the_old_one(tmp_path: Path) -> None:
    ca_key, ca = create_ca(trust_domain="meshkit.test")
    key, cert = issue_workload(ca_key, ca, "orderd")
    write_private_key(tmp_path / "orderd.key", key)
    write_certificate(tmp_path / "orderd.pem", cert)
    signer = MessageSigner.from_dir(tmp_path, "orderd", reload_interval_s=0)
    _key2, cert2 = issue_workload(ca_key, ca, "orderd")
    write_certificate(tmp_path / "orderd.pem", cert2, overwrite=True)  # key not yet written
    h: dict[str, str] = {}
    signer.sign(h, **_ARGS)  # type: ignore[arg-type]
    MessageVerifier(_pem(ca)).verify(h, **_ARGS)  # the old pair, still matching


def test_the_verifier_takes_a_rotated_ca_bundle(tmp_path: Path) -> None:
    _old_key, old_ca = create_ca(trust_domain="meshkit.test")
    new_key, new_ca = create_ca(trust_domain="meshkit.test")
    (tmp_path / "ca.pem").write_bytes(_pem(old_ca))
    verifier = MessageVerifier.from_file(tmp_path / "ca.pem", reload_interval_s=0)
    k, c = issue_workload(new_key, new_ca, "orderd")
    h: dict[str, str] = {}
    MessageSigner(c, k).sign(h, **_ARGS)  # type: ignore[arg-type]
    with pytest.raises(MessageIdentityError):
        verifier.verify(h, **_ARGS)  # type: ignore[arg-type]
    (tmp_path / "ca.pem").write_bytes(_pem(old_ca) + _pem(new_ca))  # the rotation
    assert verifier.verify(h, **_ARGS).service == "orderd"  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, float("nan"), "5", True])
def test_a_bad_reload_interval_is_refused_quoted(tmp_path: Path, bad: object) -> None:
    from meshkit.errors import ConfigError

    (tmp_path / "ca.pem").write_bytes(_pem(create_ca(trust_domain="meshkit.test")[1]))
    with pytest.raises(ConfigError, match="reload_interval_s") as err:
        MessageVerifier.from_file(tmp_path / "ca.pem", reload_interval_s=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)
