"""EtcdOptions.from_env reads etcdctl's variables as etcdctl does (etcdctl/ctlv3/command/
global.go, ``newClientCfg``): a TLS file or ``ETCDCTL_INSECURE_TRANSPORT=false`` makes an
endpoint given without a scheme use TLS, and an incomplete credential pair
(``ETCDCTL_PASSWORD`` with no ``ETCDCTL_USER``) fails at construction instead of being
dropped; a complete pair is read as etcdctl reads it
(tests/discovery/test_hunt43_etcd_env_credentials.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import ConfigError, RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, EtcdTls, require_etcd_binary

_SECRET = "S3cretPw-do-not-print"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    return {"ETCDCTL_CACERT": str(tmp_path / "ca.pem"), "ETCDCTL_CERT": str(tmp_path / "c.pem"),
            "ETCDCTL_KEY": str(tmp_path / "c.key")}


@pytest.mark.parametrize("names", [("ETCDCTL_CACERT",), ("ETCDCTL_CERT", "ETCDCTL_KEY"),
                                   ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")])
def test_schemeless_endpoints_use_tls_when_a_tls_file_is_set(
        tls_files: dict[str, str], names: tuple[str, ...]) -> None:
    """``ETCDCTL_ENDPOINTS=h:2379`` with ``ETCDCTL_CACERT`` (or a client certificate) means
    TLS, as etcdctl dials it (an endpoint without a scheme takes TLS when a TLS file is
    given); ``from_env`` refused the pair as "ca_file/cert_file need https endpoints"."""
    env = {"ETCDCTL_ENDPOINTS": "10.0.0.1:2379,10.0.0.2",
           **{name: tls_files[name] for name in names}}
    options = EtcdOptions.from_env(env)
    assert options.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert options.scheme == "https"
    # etcd:// without a host takes ETCDCTL_ENDPOINTS, so the same holds there
    assert EtcdOptions.from_uri("etcd://", environ=env).endpoints == options.endpoints


def test_insecure_transport_false_means_tls_for_schemeless_endpoints() -> None:
    """``ETCDCTL_INSECURE_TRANSPORT=false`` makes etcdctl dial endpoints without a scheme
    with TLS; ``from_env`` ignored it and spoke plain http (the default, true, still
    does); a value that is no boolean fails quoting it."""
    env = {"ETCDCTL_ENDPOINTS": "h:2379"}
    assert EtcdOptions.from_env(env).endpoints == ("http://h:2379",)
    assert EtcdOptions.from_env({**env, "ETCDCTL_INSECURE_TRANSPORT": "true"}
                                ).endpoints == ("http://h:2379",)
    assert EtcdOptions.from_env({**env, "ETCDCTL_INSECURE_TRANSPORT": "false"}
                                ).endpoints == ("https://h:2379",)
    # an explicit scheme is kept, as etcdctl keeps it
    assert EtcdOptions.from_env({"ETCDCTL_ENDPOINTS": "http://h:2379",
                                 "ETCDCTL_INSECURE_TRANSPORT": "false"}
                                ).endpoints == ("http://h:2379",)
    with pytest.raises(ConfigError, match=r"ETCDCTL_INSECURE_TRANSPORT.*'maybe'"):
        EtcdOptions.from_env({**env, "ETCDCTL_INSECURE_TRANSPORT": "maybe"})


def test_explicit_http_endpoints_with_tls_files_still_fail(tls_files: dict[str, str]) -> None:
    """An endpoint written ``http://`` with a TLS file still fails at construction (the
    files would go unused), quoting the endpoints."""
    env = {"ETCDCTL_ENDPOINTS": "http://h:2379", "ETCDCTL_CACERT": tls_files["ETCDCTL_CACERT"]}
    with pytest.raises(ConfigError, match="http://h:2379"):
        EtcdOptions.from_env(env)


@pytest.mark.parametrize("env", [
    {"ETCDCTL_PASSWORD": _SECRET},
], ids=["password"])
def test_etcd_user_variables_fail_at_construction_without_the_password(
        env: dict[str, str]) -> None:
    """``ETCDCTL_PASSWORD`` with no ``ETCDCTL_USER`` fails at construction naming the
    variables, never quoting the password: it was dropped silently, and every request later
    failed with etcd's permission errors far from the cause."""
    with pytest.raises(ConfigError) as info:
        EtcdOptions.from_env({"ETCDCTL_ENDPOINTS": "h:2379", **env})
    text = str(info.value)
    assert _SECRET not in text, text
    assert ("ETCDCTL_USER" in text) or ("ETCDCTL_PASSWORD" in text), text


def test_insecure_skip_tls_verify_sets_verify() -> None:
    """``ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true`` (etcdctl's ``--insecure-skip-tls-verify``)
    sets ``verify=False``; it was ignored, so a member with a self-signed certificate
    that etcdctl reached failed every request; a value that is no boolean fails quoting
    it, and ``?verify=false`` in a URI does the same."""
    env = {"ETCDCTL_ENDPOINTS": "https://h:2379"}
    assert EtcdOptions.from_env(env).verify is True
    assert EtcdOptions.from_env({**env, "ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "true"}
                                ).verify is False
    assert EtcdOptions.from_env({**env, "ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "false"}
                                ).verify is True
    assert EtcdOptions.from_uri("etcd+https://h:2379?verify=false", environ={}).verify is False
    with pytest.raises(ConfigError, match="'sometimes'"):
        EtcdOptions.from_env({**env, "ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "sometimes"})
    with pytest.raises(ConfigError, match="verify"):
        EtcdOptions(verify="no")  # type: ignore[arg-type]


async def test_a_member_is_reached_without_verification(tmp_path: Path) -> None:
    """With ``verify=False`` a member whose certificate no trusted CA signed is reached
    (the client certificate still presented), as etcdctl ``--insecure-skip-tls-verify``
    does; with verification on the same member is refused."""
    binary = require_etcd_binary()
    pki = tmp_path / "pki"
    ca = init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=1)
    server = issue_into_dir(pki, "etcd", ttl_h=1, dns=("localhost",), ips=("127.0.0.1",))
    client = issue_into_dir(pki, "client", ttl_h=1, dns=("localhost",))
    cluster = EtcdCluster(binary, tmp_path, size=1, tls=EtcdTls(
        cert_file=Path(server.cert_file), key_file=Path(server.key_file),
        client_ca_file=Path(ca.ca_file)))
    fast = {"ttl_s": 2, "request_timeout_s": 1.0, "operation_timeout_s": 1.0,
            "backoff_base_s": 0.05, "backoff_max_s": 0.3}
    try:
        await cluster.start()
        endpoints = tuple(cluster.endpoints)
        unverified = EtcdRegistry(EtcdOptions(
            endpoints=endpoints, verify=False, cert_file=str(client.cert_file),
            key_file=str(client.key_file), **fast))
        verified = EtcdRegistry(EtcdOptions(
            endpoints=endpoints, cert_file=str(client.cert_file),
            key_file=str(client.key_file), **fast))
        try:
            instance = make_instance(unique_service(), 1)
            await unverified.register(instance)
            assert (await unverified.snapshot(instance.service)).live == {instance}
            with pytest.raises(RegistryError, match=r"(?i)certificate"):
                await verified.register(make_instance(unique_service(), 2))
        finally:
            await unverified.close()
            await verified.close()
    finally:
        cluster.close()


def test_an_https_uri_without_a_host_takes_schemeless_endpoints_as_https() -> None:
    """``etcd+https://`` with no host takes ``ETCDCTL_ENDPOINTS``; endpoints written there
    without a scheme are then https (the URI asks for TLS), where they were taken for
    http and the URI refused ("asks for https but the endpoints are ('http://h:2379',)");
    an endpoint written ``http://`` is still refused."""
    env = {"ETCDCTL_ENDPOINTS": "h1:2379,h2"}
    assert EtcdOptions.from_uri("etcd+https://", environ=env).endpoints == (
        "https://h1:2379", "https://h2:2379")
    assert EtcdOptions.from_uri("etcd://", environ=env).endpoints == (
        "http://h1:2379", "http://h2:2379")
    with pytest.raises(ConfigError, match="asks for https"):
        EtcdOptions.from_uri("etcd+https://", environ={"ETCDCTL_ENDPOINTS": "http://h:2379"})
