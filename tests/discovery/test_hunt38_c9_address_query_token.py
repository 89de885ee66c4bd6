"""A Consul address or etcd endpoint carrying a token in its query was quoted with it.

Consul's HTTP API takes an ACL token as ``?token=`` (legacy, still served), so a URL
copied from a ``curl`` line into ``CONSUL_HTTP_ADDR`` or ``ConsulOptions(addr=...)``
(``http://consul:8500?token=...``), or an etcd endpoint written the same way, carries
one. The address is refused (an address has no query), but the refusal quoted it as
written: "addr must be host:port or scheme://host:port, got
'http://consul:8500?token=<the token>'". User info was masked there already; now the
value of every query key and any fragment are too, as registry URIs are shown.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshkit.discovery import ConsulOptions, EtcdOptions
from meshkit.errors import ConfigError

TOKEN = "9c9f00d1-aaaa-4bbb-8ccc-c9c9c9c9c9c9"

BUILDERS: dict[str, Callable[[str], object]] = {
    "consul-addr": lambda a: ConsulOptions(addr=a),
    "consul-env": lambda a: ConsulOptions.from_env({"CONSUL_HTTP_ADDR": a}),
    "etcd-endpoint": lambda a: EtcdOptions(endpoints=(a.replace("8500", "2379"),)),
}
ADDRESSES = {
    "query": f"http://consul:8500?token={TOKEN}",
    "path-and-query": f"http://consul:8500/v1/agent/self?token={TOKEN}",
    "no-scheme": f"consul:8500/?token={TOKEN}",
    "second-key": f"http://consul:8500?dc=dc1&token={TOKEN}",
    "user-info-and-query": f"http://ops:{TOKEN}@consul:8500?x=1",
}


@pytest.mark.parametrize("address", sorted(ADDRESSES))
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_the_refusal_does_not_quote_the_token(builder: str, address: str) -> None:
    with pytest.raises(ConfigError) as info:
        BUILDERS[builder](ADDRESSES[address])
    assert TOKEN not in str(info.value), str(info.value)
    assert "consul:" in str(info.value) or "consul" in str(info.value)


def test_an_address_without_secrets_is_quoted_as_written() -> None:
    with pytest.raises(ConfigError, match=r"got 'consul:8500/v1'"):
        ConsulOptions(addr="consul:8500/v1")
