"""A renewed intermediate CA in the certificate file (the leaf unchanged) is taken.

The reloaders tell a renewal by ``TLSMaterial.fingerprint``, which hashed the leaf and the
CA bundle only: a ``tls.crt`` rewritten with the signing CA's renewed certificate (same
key, new validity: SPIRE or cert-manager under an intermediate that was renewed while the
leaf was not) read as no change, so servers and clients went on presenting the old
intermediate, and every handshake failed once it expired though the files on disk were
right. The fingerprint now covers the whole chain.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshkit.auth._tls import ChannelCredentialsReloader, _ServerReloader
from tests.auth.chains import Issuer, foreign_ca, key_pem, pem, secret_dir, secret_tls, svid


def _renewed(ca: Issuer, root: Issuer, *, ttl_h: float) -> x509.Certificate:
    """``ca``'s certificate renewed by ``root``: same key and subject and extensions, a
    new serial and validity."""
    old = ca[1]
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(root[1].subject)
         .public_key(old.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(hours=ttl_h)))
    for ext in old.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    return b.sign(root[0], hashes.SHA256())


def test_a_renewed_intermediate_beside_the_same_leaf_is_reloaded(tmp_path: Path) -> None:
    root = foreign_ca("upstream root", ttl_h=48)
    inter = foreign_ca("signing CA", issuer=root, path_length=0, ttl_h=2)
    key, leaf = svid(inter, "userd")
    d = secret_dir(tmp_path, "userd", ca=pem(root[1]), crt=pem(leaf, inter[1]),
                   key=key_pem(key))
    tls = secret_tls(d, reload_interval_s=1e-9)
    server = _ServerReloader(tls)
    client = ChannelCredentialsReloader(tls)
    # the signing CA renewed (the old one expires in 2 h); the leaf is not re-issued
    renewed = _renewed(inter, root, ttl_h=24)
    (d / "tls.crt").write_bytes(pem(leaf, renewed))
    assert server() is not None  # was None: "no change", the old chain kept
    assert server.current.cert_pem == pem(leaf, renewed)
    assert client.check(force=True)  # was False
    assert client.generation == 2
    # nothing changed since: nothing to reload
    assert server() is None
    assert not client.check(force=True)
