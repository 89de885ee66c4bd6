"""A registry URI that is no string fails as every bad URI does, ConfigError, naming the
function's argument by its type only (bytes may hold a password): registry_from_uri(None)
(``os.environ.get(...)`` of an unset variable) raised a bare ``AttributeError: 'NoneType'
object has no attribute 'partition'``, an int ``AttributeError ... 'decode'``, a
``pathlib.Path`` a bare ``TypeError``; ConsulOptions/EtcdOptions.from_uri (and the
registries' from_uri) read ``b"consul://..."`` as a URI of the scheme ``b'consul'``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.discovery import (
    ConsulOptions,
    ConsulRegistry,
    EtcdOptions,
    EtcdRegistry,
    registry_from_uri,
)
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_SECRET = "pw-s3cr3t"

_VALUES: dict[str, object] = {
    "none": None,
    "int": 8500,
    "path": Path("/var/lib/meshkit"),
    "bytes-consul": f"consul://u:{_SECRET}@127.0.0.1:8500".encode(),
    "bytes-etcd": f"etcd://u:{_SECRET}@127.0.0.1:2379".encode(),
}

_READERS: dict[str, Callable[[object], object]] = {
    "registry_from_uri": lambda u: registry_from_uri(u, environ={}),  # type: ignore[arg-type]
    "ConsulOptions.from_uri": lambda u: ConsulOptions.from_uri(u, {}),  # type: ignore[arg-type]
    "ConsulRegistry.from_uri": lambda u: ConsulRegistry.from_uri(u,  # type: ignore[arg-type]
                                                                 environ={}),
    "EtcdOptions.from_uri": lambda u: EtcdOptions.from_uri(u, {}),  # type: ignore[arg-type]
    "EtcdRegistry.from_uri": lambda u: EtcdRegistry.from_uri(u,  # type: ignore[arg-type]
                                                             environ={}),
}


@pytest.mark.parametrize("value", sorted(_VALUES))
@pytest.mark.parametrize("reader", sorted(_READERS))
def test_a_uri_that_is_no_string_is_a_config_error(reader: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _READERS[reader](_VALUES[value])
    text = str(caught.value)
    assert "URI" in text and "must be a string" in text, text
    assert type(_VALUES[value]).__name__ in text, text
    assert _SECRET not in text


@pytest.mark.parametrize("reader", sorted(_READERS))
def test_a_string_uri_is_still_read(reader: str) -> None:
    uri = {"registry_from_uri": "consul://127.0.0.1:8500",
           "ConsulOptions.from_uri": "consul://127.0.0.1:8500",
           "ConsulRegistry.from_uri": "consul://127.0.0.1:8500",
           "EtcdOptions.from_uri": "etcd://127.0.0.1:2379",
           "EtcdRegistry.from_uri": "etcd://127.0.0.1:2379"}[reader]
    _READERS[reader](uri)
