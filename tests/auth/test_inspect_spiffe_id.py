"""``describe_certificate`` / ``meshkit certs inspect`` report a SPIFFE ID only when the
certificate has one (X.509-SVID §2: exactly one URI SAN, a valid SPIFFE ID).

Before, any single URI beginning ``spiffe://`` was shown as the certificate's SPIFFE ID,
even beside a second URI SAN (which makes it no SVID at all) or when malformed (an empty
path segment, an upper-case trust domain: SPIFFE ID §2): the operator read an identity
every peer refuses the certificate for lacking.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth import describe_certificate
from meshkit.auth.cli import main
from tests.auth.chains import ca_of, leaf, pem
from tests.auth.conftest import TD, Pki


@pytest.mark.parametrize("uris", [
    [f"spiffe://{TD}/svc/orderd", "https://orderd.example/"],
    [f"spiffe://{TD}/svc//orderd"],
    [f"spiffe://{TD.upper()}/svc/orderd"],
    [f"spiffe://{TD}/svc/orderd?x=1"],
], ids=["second-uri", "empty-segment", "upper-case-td", "query"])
def test_no_spiffe_id_is_reported_for_a_certificate_without_a_valid_one(
        pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], uris: list[str]) -> None:
    ca_key, ca = ca_of(pki)
    _, cert = leaf(ca_key, ca, uris=uris)
    info = describe_certificate(cert)
    assert info.spiffe_id is None
    assert info.uris == tuple(uris)  # the URIs themselves are still listed
    path = tmp_path / "odd.pem"
    path.write_bytes(pem(cert))
    assert main(["certs", "inspect", str(path)]) == 0
    assert "spiffe id:     -\n" in capsys.readouterr().out


def test_a_valid_spiffe_id_is_reported(pki: Pki) -> None:
    ca_key, ca = ca_of(pki)
    _, cert = leaf(ca_key, ca)
    assert describe_certificate(cert).spiffe_id == f"spiffe://{TD}/svc/orderd"
    assert describe_certificate(ca).spiffe_id == f"spiffe://{TD}"  # a trust domain's own
