"""EtcdRegistry with ``user``/``password`` (c4fb056f): the requests that find no token (the
first ones, or every one refused ``invalid auth token`` at once: the token idle past
``--auth-token-ttl``, a member restarted) share one ``/v3/auth/authenticate``.

Each such request authenticated on its own: a process with 16 watches (or a burst of
calls) sent 16 authenticates at once, at start and again each time the token expired;
each one is a bcrypt check of the password and a Raft proposal on etcd (its simple token
is assigned by every member), so a fleet of such processes, all refused after a member's
restart, hammered the cluster as the Go client never does (it holds one token and
refreshes it under a lock). A real etcd node with authentication on; the registry's
``/auth/authenticate`` calls counted by a spy that calls through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

_PASSWORD = "st0rm-Pa55word"
_TOKEN_TTL_S = 1
_N = 16
FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}


class _AuthEtcd(EtcdCluster):
    """One etcd node whose idle auth tokens expire after ``_TOKEN_TTL_S``."""

    def _assign_ports(self) -> None:
        super()._assign_ports()
        for m in self.members:
            m.args += ["--auth-token-ttl", str(_TOKEN_TTL_S)]



@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_AuthEtcd]:
    cluster = _AuthEtcd(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        cluster.add_root(_PASSWORD)
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.close()


def _counted(registry: EtcdRegistry) -> list[int]:
    """Count the registry's ``/auth/authenticate`` requests (each still made)."""
    count = [0]
    post_call = registry._post_call

    async def spy(session: Any, endpoint: str, path: str, *args: Any, **kw: Any) -> Any:
        if path == "/auth/authenticate":
            count[0] += 1
        return await post_call(session, endpoint, path, *args, **kw)

    registry._post_call = spy  # type: ignore[method-assign]
    return count


def _registry(node: EtcdCluster) -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="root",
                                    password=_PASSWORD, **FAST))


async def test_a_burst_of_first_calls_authenticates_once(node: _AuthEtcd) -> None:
    """16 snapshot() calls at once on a new registry: one authenticate (before: 16)."""
    services = [unique_service() for _ in range(_N)]
    async with _registry(node) as registry:
        count = _counted(registry)
        snapshots = await asyncio.gather(*(registry.snapshot(s) for s in services))
        assert all(not s.live for s in snapshots)
        assert count[0] == 1, count


async def test_tokens_refused_at_once_are_replaced_once(node: _AuthEtcd) -> None:
    """The token idle past ``--auth-token-ttl``: 16 calls at once, each refused
    ``invalid auth token``, get one new token between them (before: 16 authenticates),
    and all succeed."""
    service = unique_service()
    async with _registry(node) as owner, _registry(node) as registry:
        await owner.register(make_instance(service, 1))
        assert (await registry.snapshot(service)).live == {make_instance(service, 1)}
        count = _counted(registry)
        await asyncio.sleep(_TOKEN_TTL_S + 1.5)  # the reader's token expires
        snapshots = await asyncio.gather(*(registry.snapshot(service) for _ in range(_N)))
        assert all(s.live == {make_instance(service, 1)} for s in snapshots)
        assert count[0] == 1, count
        await owner.deregister(make_instance(service, 1))


async def test_many_watches_started_at_once_authenticate_once(node: _AuthEtcd) -> None:
    """16 watches started together (a channel per service at a process's start): their
    reads and streams share one token got once, and every watch lists its instance."""
    services = [unique_service() for _ in range(_N)]
    async with _registry(node) as owner:
        for service in services:
            await owner.register(make_instance(service, 1))
        async with _registry(node) as registry:
            count = _counted(registry)
            watchers = [Collector(registry, service) for service in services]
            try:
                for service, watcher in zip(services, watchers, strict=True):
                    assert await watcher.next(timeout_s=10) == {make_instance(service, 1)}
                assert count[0] == 1, count
            finally:
                for watcher in watchers:
                    await watcher.stop()
        for service in services:
            await owner.deregister(make_instance(service, 1))
