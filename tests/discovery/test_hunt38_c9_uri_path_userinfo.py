"""A Consul or etcd URI written without ``//`` quoted its credentials as a path.

``registry_from_uri`` refuses user info in a Consul or etcd URI without quoting it
(``consul://ops:pw@agent`` -> "must not carry user info", the URI shown ``***@...``). The
same URI with one ``/`` missing or none (``consul:ops:pw@agent:8500``,
``consul:TOKEN@agent``, ``etcd:/root:pw@etcd:2379``: the scheme's ``//`` forgotten) has
no host to the parser, all of it is a path, and the refusal "takes no path" quoted that
path as written, password or token and all, beside the URI it masked
(``got 'ops:pw@agent:8500' (in '***@agent:8500')``). The path is now shown as the URI
is, user info masked.
"""

from __future__ import annotations

import pytest

from meshkit.discovery import registry_from_uri
from meshkit.errors import ConfigError

SECRET = "Zq8c9pw"
URIS = {
    "consul-no-slashes": f"consul:ops:{SECRET}@consul.internal:8500",
    "consul-token-no-slashes": f"consul:{SECRET}@consul.internal",
    "consul-one-slash": f"consul:/ops:{SECRET}@consul.internal",
    "consul-https-no-slashes": f"consul+https:ops:{SECRET}@consul.internal:8501",
    "consul-password-with-slash": f"consul:ops:{SECRET}/x@consul.internal:8500",
    "etcd-no-slashes": f"etcd:root:{SECRET}@etcd:2379",
    "etcd-one-slash": f"etcd:/root:{SECRET}@etcd:2379",
}


@pytest.mark.parametrize("name", sorted(URIS))
def test_the_refusal_does_not_quote_the_credentials(name: str) -> None:
    with pytest.raises(ConfigError, match="takes no path") as info:
        registry_from_uri(URIS[name])
    assert SECRET not in str(info.value), str(info.value)
    assert "***@" in str(info.value)


@pytest.mark.parametrize("uri", ["consul://127.0.0.1:8500/v1", "etcd://127.0.0.1:2379/x"])
def test_a_path_without_user_info_is_still_quoted(uri: str) -> None:
    with pytest.raises(ConfigError, match="takes no path") as info:
        registry_from_uri(uri)
    assert repr("/" + uri.rpartition("/")[2]) in str(info.value)
