"""``localhost.`` (with its root dot) is not counted as loopback (review of ea46a28e):
glibc's files backend does not match it against /etc/hosts' ``localhost`` and sends it
to the network's DNS server (measured here: ``getent ahosts localhost.`` asks
nameserver:53 and fails), the same reason ``app.localhost`` is not counted; so a JWKS URL
``http://localhost.:8080/...`` is refused without ``allow_http`` as any plain-http URL
to a host other than loopback is. ``localhost`` itself (answered from /etc/hosts) still
is."""

from __future__ import annotations

import pytest

from meshkit._hosts import is_loopback
from meshkit.auth import JWKSClient
from meshkit.errors import ConfigError


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST."],
                         ids=["root-dot", "upper-root-dot"])
def test_localhost_with_its_root_dot_is_not_loopback(host: str) -> None:
    """A fully qualified localhost. goes to DNS: not loopback."""
    assert not is_loopback(host)


async def test_a_plain_http_jwks_url_to_localhost_root_dot_is_refused() -> None:
    """The JWKS plain-http exception holds for localhost, not localhost."""
    with pytest.raises(ConfigError, match="plain http to a host other than loopback"):
        JWKSClient("http://localhost.:8080/.well-known/jwks.json")
    JWKSClient("http://localhost:8080/.well-known/jwks.json")  # still taken
