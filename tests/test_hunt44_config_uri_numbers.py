"""A registry URI's numeric options (``?ttl_s=...``) are read as the environment's
numbers are (meshkit._env.decimal_number): ``ttl_s=1_0`` (Python's float() reads 10) and
full-width digits are refused, quoted, instead of taken."""

from __future__ import annotations

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.discovery._consul import ConsulOptions
from meshkit.discovery._options import query_fields
from meshkit.errors import ConfigError


@pytest.mark.parametrize("value", ["1_0", "\uff15", "0x5", "infinity"],
                         ids=["underscore", "fullwidth", "hex", "infinity"])
def test_query_numbers_refuse_python_only_spellings(value: str) -> None:
    """query_fields refuses a number only float() reads, the key and where named."""
    with pytest.raises(ConfigError, match="ttl_s must be a number") as info:
        query_fields({"ttl_s": [value]}, floats=("ttl_s",), strs=(), where="URI 'x'")
    assert "URI 'x'" in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("5", 5.0), ("2.5", 2.5), ("1e1", 10.0)],
                         ids=["int", "fraction", "exponent"])
def test_query_numbers_read_plain_numbers(value: str, expected: float) -> None:
    """Plain decimal numbers read as before."""
    assert query_fields({"ttl_s": [value]}, floats=("ttl_s",), strs=(),
                        where="URI 'x'") == {"ttl_s": expected}


def test_registry_uris_refuse_underscores() -> None:
    """etcd and Consul URIs refuse ttl_s=1_0 (it used to be a TTL of 10 s)."""
    with pytest.raises(ConfigError, match="'1_0'"):
        EtcdOptions.from_uri("etcd://127.0.0.1:2379?ttl_s=1_0", environ={})
    with pytest.raises(ConfigError, match="'1_0'"):
        ConsulOptions.from_uri("consul://127.0.0.1:8500?ttl_s=1_0", environ={})
