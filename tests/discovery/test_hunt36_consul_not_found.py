"""ConsulRegistry: a listing answered 404 (a proxy or gateway in front of the agent that
does not route the path, for a while) is a failed read, not an empty service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

_HOP = {"host", "content-length", "transfer-encoding", "content-encoding", "connection"}


class _Proxy:
    """An HTTP proxy in front of ``upstream`` that answers reads of ``/v1/health/`` and
    ``/v1/catalog/`` with Go's plain ``404 page not found`` while :attr:`not_found` is
    set (counted in :attr:`refused`)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.not_found = False
        self.refused = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        if self.not_found and request.path.startswith(("/v1/health/", "/v1/catalog/")):
            self.refused += 1
            return web.Response(status=404, text="404 page not found\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=await request.read()) as resp:
            body = await resp.read()
            out: dict[str, Any] = {k: v for k, v in resp.headers.items()
                                   if k.lower() not in _HOP}
        return web.Response(status=resp.status, body=body, headers=out)

    async def __aenter__(self) -> _Proxy:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()


@pytest.fixture
async def proxy() -> AsyncIterator[_Proxy]:
    async with ConsulDouble() as double, _Proxy(double.url) as p:
        yield p


async def test_a_listing_answered_404_keeps_the_last_set(proxy: _Proxy) -> None:
    """py-consul's JSON callback reads a 404 as "nothing" (made for a missing KV key), so
    a 404 to a watch's health query was a listing of no instance: the watch yielded the
    empty set, and every client of the service lost all its endpoints for as long as the
    404s lasted, where a failed read keeps the last set (Registry.watch: "it never yields
    because of an error"); snapshot(), failing() and services() answered empty too. A
    404 is now a failed read: the watch keeps its set and retries with backoff,
    status() says readable=False, the one-shot reads raise RegistryError."""
    service = unique_service()
    instance = make_instance(service, 1)
    options = ConsulOptions(addr=f"127.0.0.1:{proxy.port}", ttl_s=3.0, wait_s=0.3,
                            backoff_base_s=0.02, backoff_max_s=0.05,
                            watch_query_interval_s=0.05)
    async with ConsulRegistry(options) as registry:
        await registry.register(instance)
        watcher = Collector(registry, service)
        assert await watcher.next() == {instance}
        proxy.not_found = True
        await until(lambda: proxy.refused >= 3, timeout_s=5, what="three 404 answers")
        assert watcher.queue.empty(), watcher.queue
        assert registry.status().readable is False
        for read in (registry.snapshot(service), registry.failing(service),
                     registry.services()):
            with pytest.raises(RegistryError, match="404"):
                await read
        proxy.not_found = False
        await until(lambda: registry.status().readable is True, timeout_s=5,
                    what="reads working again")
        assert watcher.queue.empty() and watcher.latest == {instance}
        await watcher.stop()
