"""The issuer refuses a workload whose identity DNS name would exceed 253 characters.

A trust domain may have up to 200 characters and a service label 63, but the identity
name ``<service>.svc.<td>`` every workload certificate carries (and clients verify as
the TLS host name) was written unchecked: 268 characters for the longest pair, no DNS
name (RFC 1034 §3.1, RFC 5280 §4.2.1.6's preferred name syntax), while an extra DNS
name of 254 characters was refused (tests/auth/test_issue_dns_name_bounds.py). The
issuer now refuses it as it refuses the extra names, saying what to shorten.
"""

from __future__ import annotations

import pytest

from meshkit.auth import create_ca, identity_dns_name, issue_workload
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def _domain(total: int) -> str:
    """A trust domain of ``total`` characters in labels of at most 63."""
    labels, left = [], total
    while left > 0:
        n = min(63, left)
        labels.append("d" * n)
        left -= n + 1
    td = ".".join(labels)
    return td if len(td) == total else td[:-1] + "e"


def test_an_identity_name_over_253_characters_is_refused() -> None:
    td = _domain(200)
    assert len(td) == 200
    key, ca = create_ca(trust_domain=td, ttl_days=1)
    service = "s" * 63
    assert len(identity_dns_name(td, service)) == 268
    with pytest.raises(ConfigError, match="253") as err:
        issue_workload(key, ca, service, ttl_h=1)
    assert "shorten" in str(err.value)


def test_an_identity_name_of_253_characters_is_issued() -> None:
    td = _domain(253 - 63 - len(".svc."))
    key, ca = create_ca(trust_domain=td, ttl_days=1)
    _leaf_key, leaf = issue_workload(key, ca, "s" * 63, ttl_h=1)
    assert leaf is not None
