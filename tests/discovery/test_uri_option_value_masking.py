"""A registry URI whose option value has a second pair run into it (``?ttl_s=5;password=pw``,
``ttl_s=5%26password%3Dpw``) is refused without quoting that value: the error names the
option, and the password never reaches a log (the URI itself is shown masked by
``mask_query``)."""
from __future__ import annotations

import pytest

from meshkit.discovery import registry_from_uri
from meshkit.errors import ConfigError

SECRET = "hunter2"


@pytest.mark.parametrize("uri", [
    f"local:///tmp/meshkit-mask-test?ttl_s=5;password={SECRET}",
    f"local:///tmp/meshkit-mask-test?ttl_s=5%26password%3D{SECRET}",
    f"etcd://127.0.0.1:2379?ttl_s=5;password={SECRET}",
    f"consul://127.0.0.1:8500?ttl_s=5;token={SECRET}",
    f"consul://127.0.0.1:8500?verify=no;token={SECRET}",
])
def test_a_bad_option_value_with_a_pair_run_into_it_is_not_quoted(uri: str) -> None:
    with pytest.raises(ConfigError) as info:
        registry_from_uri(uri, environ={})
    assert SECRET not in str(info.value)
    assert "must be a" in str(info.value)


def test_a_plain_bad_value_is_still_quoted() -> None:
    with pytest.raises(ConfigError, match="ttl_s must be a number, got '3s'"):
        registry_from_uri("local:///tmp/meshkit-mask-test?ttl_s=3s", environ={})
