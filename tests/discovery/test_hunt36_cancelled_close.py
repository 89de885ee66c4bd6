"""ConsulRegistry and EtcdRegistry: a close() cancelled while it waits for the watches and
keep-alives to end still closes the HTTP client of the running loop (as the local
registry closes its file)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for this module's etcd test."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


async def _close_cancelled(registry: ConsulRegistry | EtcdRegistry) -> None:
    """close() cancelled as it waits for the watches and keep-alives to end (a shutdown's
    timeout, a TaskGroup cancelled)."""
    closing = asyncio.create_task(registry.close())
    await asyncio.sleep(0)  # close() is now waiting for the tasks it cancelled
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing


async def test_a_cancelled_consul_close_still_closes_the_client() -> None:
    """The py-consul client (an aiohttp session, its pooled connections to the agent)
    stayed open until the event loop ended, and a second close() returned at once (the
    registry was marked closed): a process that closes registries with a timeout, or
    rebuilds them, kept their connections for good. Its owner task now closes it."""
    async with ConsulDouble() as double:
        registry = ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=0.6, wait_s=0.5))
        service = unique_service()
        await registry.register(make_instance(service, 1))
        watcher = Collector(registry, service)
        await watcher.next()
        session = registry._clients[asyncio.get_running_loop()][0].http._session
        await _close_cancelled(registry)
        await until(lambda: session.closed, timeout_s=5, what="the client closed")
        await registry.close()  # idempotent
        await watcher.stop()


async def test_a_cancelled_etcd_close_still_closes_the_session(node: EtcdCluster) -> None:
    """The same for the etcd registry's aiohttp session."""
    registry = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=2))
    service = unique_service()
    await registry.register(make_instance(service, 1))
    watcher = Collector(registry, service)
    await watcher.next()
    session = registry._sessions[asyncio.get_running_loop()][0]
    await _close_cancelled(registry)
    await until(lambda: session.closed, timeout_s=5, what="the session closed")
    await registry.close()
    await watcher.stop()
