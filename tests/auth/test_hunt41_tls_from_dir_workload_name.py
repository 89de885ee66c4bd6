"""``tls_from_dir`` (what ``dial()``/``serve()`` users and ``meshkit call`` build their
mTLS from) with a workload name ``meshkit certs issue`` refuses (``Orderd``, ``order d``,
``order_d``) and no certificate of that name: its advice said "run ``meshkit certs issue
Orderd``", a command that fails ("workload service names must be one lowercase DNS
label"), or for a name with a blank typed as shown issues another name. The missing
file's error now says what is wrong with the name; a valid name keeps its advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth import CertificateError, tls_from_dir


def _dir(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    (d / "ca.pem").write_text("not read: only the files' presence is checked here\n")
    return d


@pytest.mark.parametrize("name", ["Orderd", "order d", "order_d"],
                         ids=["upper", "blank", "underscore"])
def test_a_name_certs_cannot_issue_is_named_not_advised(tmp_path: Path, name: str) -> None:
    with pytest.raises(CertificateError) as err:
        tls_from_dir(_dir(tmp_path), name)
    text = str(err.value)
    assert repr(name) in text and "lowercase DNS label" in text, text
    assert f"certs issue {name}" not in text, text


def test_a_valid_name_without_a_certificate_keeps_its_advice(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="meshkit certs issue orderd"):
        tls_from_dir(_dir(tmp_path), "orderd")
