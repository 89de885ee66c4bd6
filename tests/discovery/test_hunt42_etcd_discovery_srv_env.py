"""EtcdOptions.from_env / from_uri: ``ETCDCTL_DISCOVERY_SRV`` (etcdctl's
``--discovery-srv``: the members from the domain's ``_etcd-client._tcp`` SRV records),
which the registry does not look up, set without ``ETCDCTL_ENDPOINTS`` nor endpoints
given: it was dropped silently, so the registry dialled the default
``http://127.0.0.1:2379`` and every request failed later (connection refused) far from
the cause; it now fails at construction naming the variable and quoting the domain. With
endpoints given (the variable, an override, a URI's hosts) it is left alone."""

from __future__ import annotations

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.errors import ConfigError

_SRV = {"ETCDCTL_DISCOVERY_SRV": "etcd.example.internal"}


def test_discovery_srv_alone_fails_at_construction_naming_it() -> None:
    with pytest.raises(ConfigError, match="ETCDCTL_DISCOVERY_SRV") as info:
        EtcdOptions.from_env(_SRV)
    assert "etcd.example.internal" in str(info.value)
    with pytest.raises(ConfigError, match="ETCDCTL_DISCOVERY_SRV"):
        EtcdOptions.from_uri("etcd://", _SRV)


def test_discovery_srv_beside_endpoints_is_left_alone() -> None:
    assert EtcdOptions.from_env({**_SRV, "ETCDCTL_ENDPOINTS": "10.0.0.1:2379"}).endpoints == (
        "http://10.0.0.1:2379",)
    assert EtcdOptions.from_env(_SRV, endpoints=("http://10.0.0.2:2379",)).endpoints == (
        "http://10.0.0.2:2379",)
    assert EtcdOptions.from_uri("etcd://10.0.0.3:2379", _SRV).endpoints == (
        "http://10.0.0.3:2379",)
    assert EtcdOptions.from_env({"ETCDCTL_DISCOVERY_SRV": " "}).endpoints == (
        "http://127.0.0.1:2379",)  # empty: unset, as every variable
