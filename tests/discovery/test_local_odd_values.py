"""LocalRegistry and Instance: values at the edges (a weight past 64 bits, a foreign
writer's tags of the wrong shape, a path holding NUL). Real SQLite files."""

from __future__ import annotations

import pytest

from meshkit.discovery import Instance
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_a_weight_no_registry_can_store_is_refused_at_construction() -> None:
    """A weight past a signed 64-bit integer (what SQLite, Consul's agent and etcd's
    gateway store) is a ConfigError quoting it when the Instance is built; it used to be
    accepted and make LocalRegistry.register() fail with a bare OverflowError ("Python
    int too large to convert to SQLite INTEGER"), no RegistryError."""
    Instance(service="svc", instance_id="a", host="127.0.0.1", port=1, weight=2**63 - 1)
    with pytest.raises(ConfigError, match=r"weight.*9223372036854775808"):
        Instance(service="svc", instance_id="a", host="127.0.0.1", port=1, weight=2**63)
