"""is_loopback counts the loopback addresses and ``localhost``, and no other
``.localhost`` name: the C library's resolver sends those to the network's DNS server,
and a caller (a plain-http JWKS URL) lets clear text through only to a loopback host."""

from __future__ import annotations

import pytest

from meshkit._hosts import is_loopback


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1",
                                  "127.1.2.3", "::1", "[::1]", "::ffff:127.0.0.1"],
                         ids=["localhost", "upper", "v4", "v4-net", "v6",
                              "v6-bracketed", "v4-mapped"])
def test_loopback_hosts(host: str) -> None:
    """The loopback addresses and the name localhost are loopback."""
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["app.localhost", "app.localhost.", "localhost.example.com",
                                  "evil-localhost", "localhostx", "10.0.0.1"],
                         ids=["sub-name", "sub-name-dot", "suffix-domain", "lookalike",
                              "longer", "private-v4"])
def test_other_names_are_not_loopback(host: str) -> None:
    """A .localhost sub-name (resolved by the network's DNS here) and lookalikes are not."""
    assert not is_loopback(host)
