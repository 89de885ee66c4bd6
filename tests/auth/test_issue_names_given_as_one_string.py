"""``dns`` / ``ips`` given as one string instead of a sequence of names are refused.

``issue_workload(..., dns="localhost")`` iterated the string: every character became a
DNS SAN (``l``, ``o``, ``c``, ...: each a valid one-letter host name), so the
certificate was issued without ``localhost`` and with names nobody asked for, in silence
(RFC 5280 §4.2.1.6: the SANs are what the certificate vouches for). ``ips="127.0.0.1"``
was refused as "not an IP address: '1'", which points at the wrong mistake.
"""

from __future__ import annotations

import pytest

from meshkit.auth import issue_into_dir
from meshkit.errors import ConfigError
from tests.auth.conftest import Pki

pytestmark = pytest.mark.timeout(30)


def test_dns_as_one_string_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "orderd", ttl_h=1, dns="localhost")  # type: ignore[arg-type]
    assert "'localhost'" in str(info.value) and "dns" in str(info.value)
    assert not (pki.dir / "orderd.pem").exists() and not (pki.dir / "orderd.key").exists()


def test_ips_as_one_string_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "orderd", ttl_h=1, ips="127.0.0.1")  # type: ignore[arg-type]
    assert "'127.0.0.1'" in str(info.value) and "ips" in str(info.value)
    assert not (pki.dir / "orderd.pem").exists()


def test_sequences_still_work(pki: Pki) -> None:
    issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=["localhost"], ips=("127.0.0.1",))
    assert (pki.dir / "orderd.pem").exists()


def test_issue_workload_under_an_unconstrained_ca_refuses_dns_as_one_string() -> None:
    """A CA without DNS name constraints (cert-manager's, SPIRE's) let the string through
    in silence: a certificate for ``l``, ``o``, ``c``, ... and not ``localhost``."""
    from meshkit.auth import issue_workload
    from tests.auth.chains import foreign_ca

    ca = foreign_ca("unconstrained")
    with pytest.raises(ConfigError) as info:
        issue_workload(ca[0], ca[1], "orderd", ttl_h=1, dns="localhost")  # type: ignore[arg-type]
    assert "'localhost'" in str(info.value)


def test_create_ca_refuses_permitted_names_as_one_string() -> None:
    """``permitted_dns="localhost"`` made a CA constrained to ``l``, ``o``, ``c``, ...:
    no certificate for localhost could then be issued or verified."""
    from meshkit.auth import create_ca

    with pytest.raises(ConfigError) as info:
        create_ca(trust_domain="meshkit.test", permitted_dns="localhost")  # type: ignore[arg-type]
    assert "'localhost'" in str(info.value) and "permitted_dns" in str(info.value)
    with pytest.raises(ConfigError) as info:
        create_ca(trust_domain="meshkit.test",
                  permitted_ips="10.0.0.0/8")  # type: ignore[arg-type]
    assert "'10.0.0.0/8'" in str(info.value) and "permitted_ips" in str(info.value)
