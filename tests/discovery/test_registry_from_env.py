"""``registry_from_env(environ)`` reads every variable from ``environ``: the registry's own
(``CONSUL_*``, ``ETCDCTL_*``, ``MESHKIT_LOCAL_DIR``) as well as ``MESHKIT_REGISTRY``."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.discovery import (
    ConsulRegistry,
    EtcdRegistry,
    LocalRegistry,
    registry_from_env,
    registry_from_uri,
)


@pytest.fixture
def process_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The process's own variables, which an ``environ`` given must override entirely."""
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "10.0.0.1:8500")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "token-of-the-process")
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "http://10.0.0.1:2379")
    monkeypatch.setenv("MESHKIT_LOCAL_DIR", str(tmp_path / "process"))


@pytest.mark.usefixtures("process_env")
async def test_consul_variables_come_from_the_environ_given() -> None:
    """``registry_from_env({"MESHKIT_REGISTRY": "consul://", "CONSUL_HTTP_ADDR": ...})``
    built the registry from the process's ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN``
    (``os.environ``), mixing two environments: the token of the process went to the
    agent the caller's environment did not name."""
    registry = registry_from_env({"MESHKIT_REGISTRY": "consul://",
                                  "CONSUL_HTTP_ADDR": "10.9.8.7:8500"})
    assert isinstance(registry, ConsulRegistry)
    try:
        assert registry.options.addr == "10.9.8.7:8500"
        assert registry.options.token is None
    finally:
        await registry.close()
    registry = registry_from_uri("consul://h:8500", environ={"CONSUL_HTTP_TOKEN": "tok"})
    assert isinstance(registry, ConsulRegistry)
    try:
        assert registry.options.token == "tok"
    finally:
        await registry.close()


@pytest.mark.usefixtures("process_env")
async def test_etcd_variables_come_from_the_environ_given() -> None:
    """``etcd://`` in the ``environ`` given takes that environ's ``ETCDCTL_ENDPOINTS``, not
    the process's."""
    registry = registry_from_env({"MESHKIT_REGISTRY": "etcd://",
                                  "ETCDCTL_ENDPOINTS": "http://10.9.8.7:2379"})
    assert isinstance(registry, EtcdRegistry)
    try:
        assert registry.options.endpoints == ("http://10.9.8.7:2379",)
    finally:
        await registry.close()


@pytest.mark.usefixtures("process_env")
async def test_the_local_directory_comes_from_the_environ_given(tmp_path: Path) -> None:
    """The default local registry (no ``MESHKIT_REGISTRY``, or ``local://``) lives in the
    given environ's ``MESHKIT_LOCAL_DIR``, not the process's."""
    mine = tmp_path / "mine"
    for env in ({"MESHKIT_LOCAL_DIR": str(mine)},
                {"MESHKIT_REGISTRY": "local://", "MESHKIT_LOCAL_DIR": str(mine)}):
        registry = registry_from_env(env)
        assert isinstance(registry, LocalRegistry)
        try:
            assert registry.options.path == mine / "registry.db"
        finally:
            await registry.close()
