"""``meshkit certs`` refuses a validity shorter than an hour as a usage error.

``meshkit certs init --ttl-days 1e-6`` (0.09 s) wrote a CA that had expired before the
command ended and exited 0: every certificate it signed was refused, every mTLS
handshake failed, the cause found only by inspecting the CA; ``issue --ttl-h 1e-6``
wrote a leaf that had expired when the server read it. Both are now usage errors (exit
2, the value quoted, nothing written); an hour and more are taken.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from meshkit.cli import main


@pytest.mark.parametrize("value", ["1e-6", "0.04", "0.000001"])
def test_a_ca_validity_under_an_hour_is_a_usage_error(
        tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The CA is not written; the error names the option, the value and the minimum."""
    d = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(d), "--ttl-days", value]) == 2
    assert not (d / "ca.pem").exists() and not (d / "ca.key").exists()
    err = capsys.readouterr().err
    assert "--ttl-days" in err and repr(value) in err and "1 hour" in err, err


@pytest.mark.parametrize("value", ["1e-6", "0.5", "0.999"])
def test_a_leaf_validity_under_an_hour_is_a_usage_error(
        tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The leaf is not written; the error names the option, the value and the minimum."""
    d = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(d), "--ttl-days", "2"]) == 0
    capsys.readouterr()
    assert main(["certs", "issue", "orderd", "--dir", str(d), "--ttl-h", value]) == 2
    assert not (d / "orderd.pem").exists() and not (d / "orderd.key").exists()
    err = capsys.readouterr().err
    assert "--ttl-h" in err and repr(value) in err and "1 hour" in err, err


def test_an_hour_is_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CA of one hour (1/24 day) and a leaf of one hour are written and valid now."""
    d = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(d), "--ttl-days", str(1 / 24)]) == 0
    assert main(["certs", "issue", "orderd", "--dir", str(d), "--ttl-h", "1"]) != 2
    now = dt.datetime.now(dt.UTC)
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert ca.not_valid_after_utc > now + dt.timedelta(minutes=50)
