"""EtcdRegistry with ``user``/``password`` (review of 45459c44): a refused password
(``authentication failed, invalid user ID or password``: a password rotated in etcd and
not yet in the clients, a typo) was sent again by every request that found no token.

45459c44 shares one authenticate between the requests in flight together, but after its
refusal each watch backs off with its own jitter and retries alone: 8 watches sent about
8 authenticates per backoff period, each a bcrypt check of the password on etcd (tens of
milliseconds of CPU), so a fleet with a stale password kept etcd's CPU busy for as long
as it ran. A refusal is now remembered for ``backoff_max_s``: requests meanwhile fail
with it at once (the same error, saying so) without asking etcd, then one asks again. A
real etcd node with authentication on; the registry's authenticates counted by a spy
that calls through."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

_PASSWORD = "r1ght-Pa55word"
_WRONG = "wr0ng-Pa55word"
_N = 8


class _AuthEtcd(EtcdCluster):

    def root_token(self) -> str:
        return str(self.call("/auth/authenticate",
                             {"name": "root", "password": _PASSWORD})["token"])


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
    count = [0]
    post_call = registry._post_call

    async def spy(session: Any, endpoint: str, path: str, *args: Any, **kw: Any) -> Any:
        if path == "/auth/authenticate":
            count[0] += 1
        return await post_call(session, endpoint, path, *args, **kw)

    registry._post_call = spy  # type: ignore[method-assign]
    return count


def _registry(node: EtcdCluster, user: str, password: str) -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(
        endpoints=tuple(node.endpoints), user=user, password=password, ttl_s=3,
        request_timeout_s=2.0, operation_timeout_s=1.0, backoff_base_s=0.05,
        backoff_max_s=1.0))


async def test_watches_with_a_refused_password_do_not_hammer_etcd(node: _AuthEtcd) -> None:
    """8 watches for 3 s with a wrong password: about one authenticate per
    ``backoff_max_s`` (1 s), not one per watch retry (before: about 40)."""
    async with _registry(node, "root", _WRONG) as registry:
        count = _counted(registry)
        watchers = [Collector(registry, unique_service()) for _ in range(_N)]
        try:
            await asyncio.sleep(3.0)
        finally:
            for watcher in watchers:
                await watcher.stop()
        assert all(w.latest is None for w in watchers)
        assert 1 <= count[0] <= 6, count
        # a call meanwhile fails at once, with etcd's refusal (never the password)
        with pytest.raises(RegistryError, match="authentication failed") as caught:
            await registry.services()
        assert _WRONG not in str(caught.value)


async def test_a_password_taken_later_is_used_after_the_hold(node: _AuthEtcd) -> None:
    """The refusal is held ``backoff_max_s``, not for good: the user given that password
    in etcd meanwhile, the registry authenticates once the hold is over."""
    user = "u" + unique_service()[-8:]
    async with _registry(node, user, _WRONG) as registry:
        with pytest.raises(RegistryError, match="authentication failed"):
            await registry.services()
        token = node.root_token()
        node.call("/auth/user/add", {"name": user, "password": _WRONG}, token)
        node.call("/auth/user/grant", {"user": user, "role": "root"}, token)
        await asyncio.sleep(1.2)  # the hold (backoff_max_s) is over
        service = unique_service()
        await registry.register(make_instance(service, 1))
        assert (await registry.snapshot(service)).live == {make_instance(service, 1)}
        await registry.deregister(make_instance(service, 1))
