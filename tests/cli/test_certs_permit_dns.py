"""``meshkit certs init --permit-dns`` (``create_ca(permitted_dns=...)``): a bad DNS
subtree is refused naming that argument, not the trust domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth._certs import create_ca
from meshkit.cli import main
from meshkit.errors import ConfigError


@pytest.mark.parametrize("bad", ["", "Example.com", "a b"])
def test_a_bad_permitted_dns_name_is_named_as_such(bad: str) -> None:
    """``create_ca(permitted_dns=("Example.com",))`` (``certs init --permit-dns``) said
    "trust domain must be a lowercase DNS name", for a trust domain that was fine."""
    with pytest.raises(ConfigError) as raised:
        create_ca(trust_domain="meshkit.local", permitted_dns=(bad,))
    assert "permitted_dns" in str(raised.value), raised.value
    assert repr(bad) in str(raised.value), raised.value
    assert "trust domain" not in str(raised.value), raised.value


def test_init_names_the_bad_permit_dns_option(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", "--dir", str(tmp_path / "c"), "--permit-dns",
                 "Example.COM"]) == 1
    err = capsys.readouterr().err
    assert "permitted_dns" in err and "'Example.COM'" in err, err
