"""A MessageSigner made from a certificate file holding the leaf and the intermediate CA
that issued it (SPIRE under an upstream root, cert-manager's ``tls.crt`` of an
intermediate issuer: what meshkit's TLS side takes, through ``x509_pem_cert_chain``).

A signature carries the leaf alone and :class:`MessageVerifier` takes a certificate
issued directly by a CA of its ``ca.pem``: every event was refused by every consumer
(dead-lettered as ``refused``), while the publisher was told nothing. The signer now
refuses such a file when it is made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshkit.errors import ConfigError
from meshkit.messaging import MessageIdentityError, MessageSigner, MessageVerifier
from tests.auth.chains import foreign_ca, key_pem, pem, svid
from tests.auth.conftest import TD


def _files(tmp_path: Path, *certs: object, key: object) -> tuple[Path, Path]:
    crt, k = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(pem(*certs))  # type: ignore[arg-type]
    k.write_bytes(key_pem(key))
    return crt, k


def test_a_leaf_with_its_intermediate_is_refused_when_the_signer_is_made(
        tmp_path: Path) -> None:
    root = foreign_ca("upstream root")
    intermediate = foreign_ca("spire signing CA", issuer=root)  # type: ignore[arg-type]
    key, cert = svid(intermediate, "orderd")  # type: ignore[arg-type]
    crt, k = _files(tmp_path, cert, intermediate[1], root[1], key=key)
    verifier = MessageVerifier(pem(root[1]))
    with pytest.raises(ConfigError) as err:
        signer = MessageSigner.from_files(crt, k, reload_interval_s=None)
        # what happened before: signed, and refused by every consumer
        headers: dict[str, str] = {}
        signer.sign(headers, msg_id="e-1", subject="orders.created", payload=b"x")
        with pytest.raises(MessageIdentityError, match="refused"):
            verifier.verify(headers, msg_id="e-1", subject="orders.created", payload=b"x")
    text = str(err.value)
    assert str(crt) in text and "spire signing CA" in text and "intermediate" in text
    assert "BEGIN" not in text


def test_a_leaf_with_the_root_that_issued_it_still_signs(tmp_path: Path) -> None:
    """A file holding the leaf and the bundle CA itself (a full chain with the root) is
    no intermediate chain: it signs, and consumers verify it."""
    root = foreign_ca("mesh root")
    key, cert = svid(root, "orderd")  # type: ignore[arg-type]
    crt, k = _files(tmp_path, cert, root[1], key=key)
    signer = MessageSigner.from_files(crt, k, reload_interval_s=None)
    headers: dict[str, str] = {}
    signer.sign(headers, msg_id="e-1", subject="orders.created", payload=b"x")
    peer = MessageVerifier(root[1].public_bytes(serialization.Encoding.PEM)).verify(
        headers, msg_id="e-1", subject="orders.created", payload=b"x")
    assert peer.spiffe_id == f"spiffe://{TD}/svc/orderd"
