"""Bounds of the issuer's DNS name check (RFC 1034 §3.1 / RFC 5280 §4.2.1.6, RFC 6125
§6.4.3) that the first tests left open: the 253-character limit of a name (its text
form, a trailing dot aside) and a wildcard that is more than the whole leftmost label."""

from __future__ import annotations

import pytest

from meshkit.auth import describe_certificate, issue_into_dir, load_certificate
from meshkit.errors import ConfigError
from tests.auth.conftest import Pki

pytestmark = pytest.mark.timeout(30)


def _long(total: int) -> str:
    """A name under localhost of ``total`` characters, in labels of at most 63."""
    left = total - len(".localhost")
    labels = []
    while left > 0:
        n = min(63, left)
        labels.append("a" * n)
        left -= n + 1
    name = ".".join(labels) + ".localhost"
    assert len(name) in (total, total + 1)
    return name if len(name) == total else name[1:]


def test_a_name_of_253_characters_is_taken_254_refused(pki: Pki) -> None:
    ok, too_long = _long(253), _long(254)
    assert len(ok) == 253 and len(too_long) == 254
    issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=(ok + ".",))  # a trailing dot is no char
    assert describe_certificate(load_certificate(pki.dir / "orderd.pem")).dns_names[1:] == (ok,)
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "userd", ttl_h=1, dns=(too_long,))
    assert repr(too_long) in str(info.value)
    assert not (pki.dir / "userd.pem").exists()


@pytest.mark.parametrize("name", ["*x.localhost", "x*.localhost", "**.localhost", "*",
                                  "*.", ".", "", "localhost.."])
def test_wildcards_and_empty_names_beyond_the_leftmost_label_are_refused(
        pki: Pki, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        issue_into_dir(pki.dir, "orderd", ttl_h=1, dns=(name,))
    assert repr(name) in str(info.value)
