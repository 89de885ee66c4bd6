"""Without ETCDCTL_ENDPOINTS, etcdctl dials its default endpoint ``127.0.0.1:2379``
(written without a scheme) with TLS when a TLS file is set or
``ETCDCTL_INSECURE_TRANSPORT=false`` (etcdctl/ctlv3/command/global.go); EtcdOptions.from_env
now does the same. It kept ``http://127.0.0.1:2379``: plain text where etcdctl uses TLS
(``ETCDCTL_INSECURE_TRANSPORT=false``), or a ConfigError (``ca_file/cert_file need https
endpoints``) for ``ETCDCTL_CACERT`` alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.errors import ConfigError


def test_insecure_transport_false_dials_the_default_with_tls() -> None:
    """ETCDCTL_INSECURE_TRANSPORT=false: https://127.0.0.1:2379, not plain text."""
    opts = EtcdOptions.from_env({"ETCDCTL_INSECURE_TRANSPORT": "false"})
    assert opts.endpoints == ("https://127.0.0.1:2379",)


def test_a_ca_file_alone_dials_the_default_with_tls(tmp_path: Path) -> None:
    """ETCDCTL_CACERT without endpoints: the default member over https."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    opts = EtcdOptions.from_env({"ETCDCTL_CACERT": str(ca)})
    assert opts.endpoints == ("https://127.0.0.1:2379",)
    assert opts.ca_file == str(ca)


def test_the_default_stays_http_without_tls() -> None:
    """No TLS file, insecure transport (etcdctl's default): plain http, as before."""
    assert EtcdOptions.from_env({}).endpoints == ("http://127.0.0.1:2379",)


def test_an_https_uri_without_a_host_takes_the_default_with_tls() -> None:
    """etcd+https:// with no host and no ETCDCTL_ENDPOINTS: the default member, https
    (it was refused: 'asks for https but the endpoints are http://...')."""
    opts = EtcdOptions.from_uri("etcd+https://", environ={})
    assert opts.endpoints == ("https://127.0.0.1:2379",)


def test_discovery_srv_without_endpoints_is_still_refused() -> None:
    """The TLS default does not hide an ETCDCTL_DISCOVERY_SRV left unlooked-up."""
    with pytest.raises(ConfigError, match="ETCDCTL_DISCOVERY_SRV"):
        EtcdOptions.from_env({"ETCDCTL_DISCOVERY_SRV": "example.com",
                              "ETCDCTL_INSECURE_TRANSPORT": "false"})
