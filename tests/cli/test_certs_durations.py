"""``meshkit certs`` durations that are no positive finite number are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.cli import main


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e400"])
def test_a_bad_ttl_is_a_usage_error(tmp_path: Path, value: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``certs init --ttl-days nan`` (or ``inf``, ``0``, ``-1``) exited 1, "refused or
    failed", after loading the certificate machinery, where a bad option is a usage
    error (2) as ``--ttl-days abc`` already was and every other command's durations
    are (a319c3f); ``issue --ttl-h`` alike. argparse now refuses them: exit 2, the
    value quoted, nothing written."""
    d = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(d), "--ttl-days", value]) == 2
    assert not d.exists()
    err = capsys.readouterr().err
    assert "--ttl-days" in err and repr(value) in err, err
    assert main(["certs", "init", "--dir", str(d)]) == 0
    capsys.readouterr()
    assert main(["certs", "issue", "orderd", "--dir", str(d), "--ttl-h", value]) == 2
    assert not (d / "orderd.pem").exists()
    err = capsys.readouterr().err
    assert "--ttl-h" in err and repr(value) in err, err
