"""EtcdRegistry with ``user``/``password`` (c4fb056f) on an etcd whose authentication is
not enabled yet: the registry got no token (``/v3/auth/authenticate`` answers
``etcdserver: authentication is not enabled``, FAILED_PRECONDITION) and failed every
register, read and watch with it, where etcdctl and etcd's Go client (``--user`` on such a
cluster) go on without a token. That breaks the order of turning authentication on in a
running system: clients given their credentials first, then ``etcdctl auth enable``. Now
the registry goes without a token while etcd's authentication is off, and gets one once
etcd asks for it (``user name is empty``). A real etcd node, auth turned on mid-test."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

_PASSWORD = "n0t-yet-Pa55word"
FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), tmp_path / "etcd")
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()


def _call(node: EtcdCluster, path: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.members[0].client_port}/v3{path}",
        data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass


async def test_credentials_before_auth_enable(node: EtcdCluster) -> None:
    """Registers, reads and watches on an etcd without authentication, then, once
    ``etcdctl auth enable`` ran, goes on with a token: a later register is listed by the
    watch and by a snapshot."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    options = EtcdOptions(endpoints=tuple(node.endpoints), user="root", password=_PASSWORD,
                          **FAST)
    async with EtcdRegistry(options) as registry:
        await registry.register(a)
        assert (await registry.snapshot(service)).live == {a}
        watcher = Collector(registry, service)
        try:
            assert await watcher.next(timeout_s=10) == {a}
            _call(node, "/auth/role/add", {"name": "root"})
            _call(node, "/auth/user/add", {"name": "root", "password": _PASSWORD})
            _call(node, "/auth/user/grant", {"user": "root", "role": "root"})
            _call(node, "/auth/enable", {})
            await registry.register(b)
            assert (await registry.snapshot(service)).live == {a, b}
            await watcher.until_set({a, b}, timeout_s=10)
        finally:
            await watcher.stop()
        await registry.deregister(a)
        await registry.deregister(b)
        assert registry.status().writable


async def test_auth_disable_is_followed(node: EtcdCluster) -> None:
    """The other way: ``etcdctl auth disable`` while the registry holds a token. etcd
    then refuses that token (``invalid auth token``) and answers an authenticate ``not
    enabled``; the registry goes on without a token (before: every call failed from
    then on)."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    _call(node, "/auth/role/add", {"name": "root"})
    _call(node, "/auth/user/add", {"name": "root", "password": _PASSWORD})
    _call(node, "/auth/user/grant", {"user": "root", "role": "root"})
    _call(node, "/auth/enable", {})
    options = EtcdOptions(endpoints=tuple(node.endpoints), user="root", password=_PASSWORD,
                          **FAST)
    async with EtcdRegistry(options) as registry:
        await registry.register(a)
        assert (await registry.snapshot(service)).live == {a}
        root = json.loads(_answer(node, "/auth/authenticate",
                                  {"name": "root", "password": _PASSWORD}))["token"]
        _answer(node, "/auth/disable", {}, root)
        await registry.register(b)
        assert (await registry.snapshot(service)).live == {a, b}
        await registry.deregister(a)
        await registry.deregister(b)


def _answer(node: EtcdCluster, path: str, body: dict[str, Any],
            token: str | None = None) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.members[0].client_port}/v3{path}",
        data=json.dumps(body).encode(), method="POST",
        headers={} if token is None else {"Authorization": token})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return bytes(resp.read())
