"""The Consul registry's TLS trust as Consul's own client sets it (``api.SetupTLSConfig``,
``rootcerts``): a CA file (``CONSUL_CACERT``) is the only root that verifies the agent,
never added to the system's trust store."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import ConfigError, RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.discovery.test_consul import _write_pki

FAST = {"ttl_s": 0.6, "wait_s": 0.5, "request_timeout_s": 2.0}


async def test_ca_file_is_the_only_trusted_root(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``ca_file`` set, an agent whose certificate a CA of the system's trust store
    signed (here ``SSL_CERT_FILE``) is refused, as Consul's client trusts only the CA
    file: the registry added ca_file to the system roots, so any public CA's certificate
    for the agent's name was accepted in place of the pinned private CA's; the agent
    signed by ca_file is still accepted."""
    for name in ("system", "pinned"):
        (tmp_path / name).mkdir()
    system, pinned = _write_pki(tmp_path / "system"), _write_pki(tmp_path / "pinned")
    monkeypatch.setenv("SSL_CERT_FILE", system["ca"])  # the "system" trust store
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for pki, accepted in ((system, False), (pinned, True)):
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(pki["server"], pki["server_key"])
        async with ConsulDouble(ssl_context=server_ctx) as double:
            options = ConsulOptions(addr=f"https://{double.addr}", ca_file=pinned["ca"], **FAST)
            instance = make_instance(unique_service(), 1)
            async with ConsulRegistry(options) as registry:
                if accepted:
                    await registry.register(instance)
                    assert instance.instance_id in double.services
                else:
                    with pytest.raises(RegistryError, match=r"(?i)certificate"):
                        await registry.register(instance)
                    assert instance.instance_id not in double.services


async def test_without_ca_file_the_system_roots_verify(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``ca_file`` the system's trust store verifies the agent, as before."""
    (tmp_path / "system").mkdir()
    system = _write_pki(tmp_path / "system")
    monkeypatch.setenv("SSL_CERT_FILE", system["ca"])
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(system["server"], system["server_key"])
    async with ConsulDouble(ssl_context=server_ctx) as double:
        instance = make_instance(unique_service(), 1)
        async with ConsulRegistry(ConsulOptions(addr=f"https://{double.addr}",
                                                **FAST)) as registry:
            await registry.register(instance)
        assert instance.instance_id in double.services


async def test_client_certificate_without_verification(tmp_path: Path) -> None:
    """``CONSUL_HTTP_SSL_VERIFY=false`` with ``CONSUL_CLIENT_CERT``/``CONSUL_CLIENT_KEY``
    presents the client certificate to an agent that requires one without verifying the
    agent's, as Consul's client does (``InsecureSkipVerify`` beside ``Certificates``):
    the options refused the pair ("cert_file needs verify=True")."""
    pki = _write_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    async with ConsulDouble(ssl_context=server_ctx) as double:
        env = {"CONSUL_HTTP_ADDR": f"https://{double.addr}", "CONSUL_HTTP_SSL_VERIFY": "false",
               "CONSUL_CLIENT_CERT": pki["client"], "CONSUL_CLIENT_KEY": pki["client_key"]}
        options = ConsulOptions.from_env(env, **FAST)
        assert (options.verify, options.cert_file) == (False, pki["client"])
        instance = make_instance(unique_service(), 1)
        async with ConsulRegistry(options) as registry:
            await registry.register(instance)
        assert instance.instance_id in double.services
        # without the client certificate the agent refuses the handshake
        bare = ConsulOptions(addr=f"https://{double.addr}", verify=False, **FAST)
        async with ConsulRegistry(bare) as registry:
            with pytest.raises(RegistryError):
                await registry.register(make_instance(unique_service(), 2))


def _agent_named(tmp_path: Path, name: str) -> tuple[str, ssl.SSLContext]:
    """A CA (its PEM path) and a server context whose certificate names only ``name``
    (no IP address): an agent reached by IP but certified by name."""
    pki = tmp_path / "named"
    ca = init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=1, permitted_dns=(name,))
    server = issue_into_dir(pki, "agent", ttl_h=1, dns=(name,))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(server.cert_file), str(server.key_file))
    return str(ca.ca_file), server_ctx


async def test_tls_server_name_verifies_an_agent_reached_by_address(tmp_path: Path) -> None:
    """``CONSUL_TLS_SERVER_NAME`` (Consul's CLI: the name the agent's certificate is
    checked against, and SNI) lets a registry reach an agent by IP address whose
    certificate names it (``server.dc1.consul``): it was ignored, so every request
    failed the host name check; another name is still refused."""
    ca_file, server_ctx = _agent_named(tmp_path, "server.dc1.consul")
    async with ConsulDouble(ssl_context=server_ctx) as double:
        env = {"CONSUL_HTTP_ADDR": f"https://{double.addr}", "CONSUL_CACERT": ca_file,
               "CONSUL_TLS_SERVER_NAME": "server.dc1.consul"}
        options = ConsulOptions.from_env(env, **FAST)
        assert options.tls_server_name == "server.dc1.consul"
        instance = make_instance(unique_service(), 1)
        async with ConsulRegistry(options) as registry:
            await registry.register(instance)
            assert instance in (await registry.snapshot(instance.service)).live
        assert instance.instance_id in double.services
        for wrong in (None, "other.dc1.consul"):
            other = ConsulOptions.from_env({**env, "CONSUL_TLS_SERVER_NAME": wrong or ""},
                                           **FAST)
            async with ConsulRegistry(other) as registry:
                with pytest.raises(RegistryError, match=r"(?i)certificate|hostname"):
                    await registry.register(make_instance(unique_service(), 2))


@pytest.mark.parametrize("value", ["", "bad name", "a\nb", "https://h"])
def test_a_bad_tls_server_name_fails_at_construction(value: str) -> None:
    """A ``tls_server_name`` that is no host name fails when the options are built,
    quoting it."""
    with pytest.raises(ConfigError, match="tls_server_name") as info:
        ConsulOptions(tls_server_name=value)
    assert repr(value) in str(info.value)


async def test_ca_path_verifies_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``CONSUL_CAPATH`` (a directory of CA certificates, Consul's CLI) verifies the agent
    with the CAs under it, subdirectories too, and those alone: it was ignored, so an
    agent signed by a private CA failed every request; ``CONSUL_CACERT`` wins over it,
    as in Consul's client."""
    for name in ("system", "pinned", "other"):
        (tmp_path / name).mkdir()
    system, pinned = _write_pki(tmp_path / "system"), _write_pki(tmp_path / "pinned")
    other = _write_pki(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", system["ca"])
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    cas = tmp_path / "cas"
    (cas / "nested").mkdir(parents=True)
    shutil.copyfile(other["ca"], cas / "other.pem")
    shutil.copyfile(pinned["ca"], cas / "nested" / "pinned.pem")
    for pki, env_extra, accepted in ((pinned, {}, True), (system, {}, False),
                                     (pinned, {"CONSUL_CACERT": other["ca"]}, False)):
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(pki["server"], pki["server_key"])
        async with ConsulDouble(ssl_context=server_ctx) as double:
            env = {"CONSUL_HTTP_ADDR": f"https://{double.addr}", "CONSUL_CAPATH": str(cas),
                   **env_extra}
            options = ConsulOptions.from_env(env, **FAST)
            assert options.ca_path == str(cas)
            instance = make_instance(unique_service(), 1)
            async with ConsulRegistry(options) as registry:
                if accepted:
                    await registry.register(instance)
                else:
                    with pytest.raises(RegistryError, match=r"(?i)certificate"):
                        await registry.register(instance)
            assert (instance.instance_id in double.services) is accepted


def test_a_missing_ca_path_fails_at_construction(tmp_path: Path) -> None:
    """A ``ca_path`` that is no directory fails when the options are built, quoting it."""
    with pytest.raises(ConfigError, match=r"ca_path must be an existing directory.*nowhere"):
        ConsulOptions.from_env({"CONSUL_CAPATH": str(tmp_path / "nowhere")})


async def test_a_ca_path_file_that_is_no_certificate_fails_the_call(tmp_path: Path) -> None:
    """A file under ``ca_path`` that holds no PEM certificate fails the request with a
    RegistryError naming it, as Consul's client refuses such a CA path."""
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "README").write_text("not a certificate")
    options = ConsulOptions(addr="https://127.0.0.1:1", ca_path=str(tmp_path / "cas"), **FAST)
    async with ConsulRegistry(options) as registry:
        with pytest.raises(RegistryError, match="README"):
            await registry.register(make_instance(unique_service(), 1))
