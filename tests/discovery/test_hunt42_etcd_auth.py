"""EtcdRegistry against an etcd with authentication on (``etcdctl auth enable``): the
registry had no way to authenticate. It refused a password (``ETCDCTL_USER``, URI user
info) and advised client certificates, which etcd's JSON gateway, the one the registry
speaks, does not take for a user ("gRPC-gateway does not support authentication using
TLS Common Name", etcd's gateway guide), so every request failed with ``etcdserver: user
name is empty``. ``EtcdOptions(user=..., password=...)`` now gets a token from
``/v3/auth/authenticate`` and gets another when etcd answers ``invalid auth token`` (a
token idle past ``--auth-token-ttl``, or a member restarted: simple tokens live in its
memory). A real etcd node."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import ConfigError, RegistryError
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(40)

_PASSWORD = "s3cret-Pa55word"
#: seconds an idle token lives (etcd's --auth-token-ttl; default 300)
_TOKEN_TTL_S = 1
FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 1.0, "operation_timeout_s": 2.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}


class _AuthEtcd(EtcdCluster):
    """One etcd node whose idle auth tokens expire after ``_TOKEN_TTL_S``."""

    def _assign_ports(self) -> None:
        super()._assign_ports()
        for m in self.members:
            m.args += ["--auth-token-ttl", str(_TOKEN_TTL_S)]



@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_AuthEtcd]:
    """A real etcd node with a user ``root`` (role root) and authentication on."""
    cluster = _AuthEtcd(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        cluster.add_root(_PASSWORD)
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.close()


def _options(node: EtcdCluster, **kw: Any) -> EtcdOptions:
    return EtcdOptions(endpoints=tuple(node.endpoints), **{**FAST, **kw})


async def test_a_user_and_password_register_watch_and_list(node: _AuthEtcd) -> None:
    """With ``user``/``password`` the registry registers, watches, lists and
    deregisters on an etcd with authentication on; without them a register fails with
    etcd's ``user name is empty``."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    async with EtcdRegistry(_options(node)) as anonymous:
        with pytest.raises(RegistryError, match="user name is empty"):
            await anonymous.register(a)
    async with EtcdRegistry(_options(node, user="root", password=_PASSWORD)) as registry:
        await registry.register(a)
        watcher = Collector(registry, service)
        assert await watcher.next() == {a}
        await registry.register(b)
        await watcher.until_set({a, b})
        assert service in await registry.services()
        assert (await registry.snapshot(service)).live == {a, b}
        await registry.deregister(a)
        await watcher.until_set({b})
        await watcher.stop()
        await registry.deregister(b)


async def test_a_token_idle_past_its_ttl_is_got_again(node: _AuthEtcd) -> None:
    """A registry left idle past ``--auth-token-ttl`` (a ``meshkit services`` pass every
    few minutes, a registry that only reads) is answered ``invalid auth token``: it gets
    a new token and the call succeeds."""
    service = unique_service()
    a = make_instance(service, 1)
    async with EtcdRegistry(_options(node, user="root", password=_PASSWORD)) as registry:
        assert service not in await registry.services()
        await asyncio.sleep(_TOKEN_TTL_S + 2.0)  # the token expires
        async with EtcdRegistry(_options(node, user="root", password=_PASSWORD)) as owner:
            await owner.register(a)
            assert service in await registry.services()
            assert (await registry.snapshot(service)).live == {a}
            await owner.deregister(a)


async def test_the_keep_alive_and_a_watch_get_a_new_token_when_theirs_expired(
        node: _AuthEtcd) -> None:
    """A keep-alive every 2 s (``ttl_s`` 6) under tokens that expire after 1 s idle: each
    round is answered ``invalid auth token`` first, gets a new token and renews the
    lease (status writable, the key under its first lease all along); a watch whose
    stream broke (the member restarted) reads again with a new token and lists a later
    registration."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    key = base64.b64encode(f"/meshkit/services/{service}/{a.instance_id}".encode()).decode()

    def lease_of_a() -> int:  # with a token of its own (they expire after 1 s idle)
        token = node.call("/auth/authenticate", {"name": "root", "password": _PASSWORD})[
            "token"]
        kvs = node.call("/kv/range", {"key": key}, token).get("kvs") or []
        return int(kvs[0].get("lease") or 0) if kvs else 0

    registry = EtcdRegistry(_options(node, user="root", password=_PASSWORD, ttl_s=6))
    try:
        await registry.register(a)
        lease = await asyncio.to_thread(lease_of_a)
        assert lease != 0
        watcher = Collector(registry, service)
        assert await watcher.next() == {a}
        await asyncio.to_thread(node.kill, 0)
        node.start_member(0)
        await node.wait_healthy()
        await asyncio.sleep(4.5)  # two keep-alive rounds, each after its token expired
        assert registry.status().writable, registry.status()
        assert await asyncio.to_thread(lease_of_a) == lease  # never lost
        await registry.register(b)
        await watcher.until_set({a, b})
        await watcher.stop()
        await registry.deregister(a)
        await registry.deregister(b)
    finally:
        await registry.close()


async def test_a_wrong_password_fails_without_quoting_it(node: _AuthEtcd) -> None:
    """A wrong password: register raises RegistryError with etcd's ``authentication
    failed``, the password quoted nowhere (nor in the options' repr)."""
    options = _options(node, user="root", password="wrong-" + _PASSWORD)
    assert _PASSWORD not in repr(options)
    async with EtcdRegistry(options) as registry:
        with pytest.raises(RegistryError, match="authentication failed") as info:
            await registry.register(make_instance(unique_service(), 1))
    assert _PASSWORD not in str(info.value) and "wrong-" not in str(info.value)


@pytest.mark.parametrize(("kw", "says"), [
    ({"user": "root"}, "user and password go together"),
    ({"password": _PASSWORD}, "user and password go together"),
    ({"user": "", "password": _PASSWORD}, "user must be a non-empty string"),
    ({"user": "root", "password": b"x"}, "password must be a string"),
], ids=["user-alone", "password-alone", "empty-user", "password-bytes"])
def test_bad_credentials_fail_at_construction_without_the_password(
        kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        EtcdOptions(**kw)
    assert _PASSWORD not in str(info.value)
