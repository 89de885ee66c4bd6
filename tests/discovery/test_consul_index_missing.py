"""A Consul agent reached through a proxy that drops ``X-Consul-Index`` from its answers.

Consul's Go client (``api.parseQueryMeta``) reads a missing ``X-Consul-Index`` as index 0,
not as an error ("hash based blocking queries don't set this"), and the blocking-query
guide (``api-docs/features/blocking``) asks clients never to block on 0 and to rate-limit
their queries: so the watch keeps reading, polling at most once per
``watch_query_interval_s`` instead of spinning on answers that come back at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

_HOP = {"host", "content-length", "transfer-encoding", "content-encoding", "connection"}


class _StrippingProxy:
    """An HTTP proxy in front of ``upstream`` that drops ``X-Consul-Index`` from every
    answer while ``strip`` is true; counts the health reads it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.strip = True
        #: drop the query's index and wait too (a caching proxy that answers at once)
        self.unblock = False
        self.health_reads = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        if request.path.startswith("/v1/health/service/"):
            self.health_reads += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        target = request.path_qs
        if self.unblock:
            target = str(request.rel_url.without_query_params("index", "wait"))
        async with self._session.request(request.method, self.upstream + target,
                                         headers=headers, data=await request.read()) as resp:
            body = await resp.read()
            out: dict[str, Any] = {k: v for k, v in resp.headers.items()
                                   if k.lower() not in _HOP}
        if self.strip:
            out = {k: v for k, v in out.items() if k.lower() != "x-consul-index"}
        return web.Response(status=resp.status, body=body, headers=out)

    async def __aenter__(self) -> _StrippingProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


@pytest.fixture
async def proxy(double: ConsulDouble) -> AsyncIterator[_StrippingProxy]:
    """A proxy to the double that strips ``X-Consul-Index``."""
    async with _StrippingProxy(double.url) as p:
        yield p


def _options(addr: str, **kwargs: Any) -> ConsulOptions:
    return ConsulOptions(addr=addr, ttl_s=3.0, wait_s=0.5, request_timeout_s=2.0,
                         backoff_base_s=0.05, backoff_max_s=0.2, **kwargs)


async def test_a_watch_without_x_consul_index_keeps_reading(
        double: ConsulDouble, proxy: _StrippingProxy) -> None:
    """A watch whose answers carry no ``X-Consul-Index`` yields the instances and their
    changes and stays readable, and ``snapshot()`` reads them (each failed every read:
    'Missing index header')."""
    service = unique_service()
    one, two = make_instance(service, 1), make_instance(service, 2)
    async with ConsulRegistry(_options(double.addr)) as writer, \
            ConsulRegistry(_options(proxy.addr, watch_query_interval_s=0.05)) as reader:
        await writer.register(one)
        watch = reader.watch(service)
        try:
            async with asyncio.timeout(5):
                assert {i.instance_id for i in await anext(watch)} == {one.instance_id}
                assert reader.status().readable
                await writer.register(two)
                while {i.instance_id for i in await anext(watch)} != {
                        one.instance_id, two.instance_id}:
                    pass
                await writer.deregister(one)
                while {i.instance_id for i in await anext(watch)} != {two.instance_id}:
                    pass
            assert reader.status().readable and reader.status().read_errors == 0
            assert {i.instance_id for i in (await reader.snapshot(service)).live} == {
                two.instance_id}
        finally:
            await watch.aclose()
            await writer.deregister(two)


@pytest.mark.parametrize("unblock", [False, True], ids=["no-index", "index-stuck"])
async def test_a_watch_without_x_consul_index_does_not_spin(
        double: ConsulDouble, proxy: _StrippingProxy, unblock: bool) -> None:
    """With no index to block on (or one that never advances: a proxy that answers at
    once, dropping ``index`` and ``wait``), the agent answers at once; the watch then polls
    at the rate limit (burst 2, one query per ``watch_query_interval_s``), not in a busy
    loop, and warns once when the answers carry no index."""
    proxy.strip = not unblock
    proxy.unblock = unblock
    service = unique_service()
    interval_s = 0.1
    async with ConsulRegistry(_options(double.addr)) as writer, \
            ConsulRegistry(_options(proxy.addr, watch_query_interval_s=interval_s)) as reader:
        await writer.register(make_instance(service, 1))
        with capture_logs() as logs:
            watch = reader.watch(service)
            try:
                async with asyncio.timeout(5):
                    await anext(watch)
                consumer = asyncio.ensure_future(anext(watch))  # polls on: nothing changes
                start, t0 = proxy.health_reads, time.monotonic()
                await until(lambda: proxy.health_reads >= start + 3, timeout_s=5)
                await asyncio.sleep(0.6)  # a measuring window, not synchronisation
                reads = proxy.health_reads - start
                elapsed = time.monotonic() - t0
                assert not consumer.done()
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            finally:
                await watch.aclose()
    # the rate limit allows about elapsed / interval_s (+ the burst); a spinning watch
    # makes hundreds of reads in the same time. Wide margin for a loaded box.
    assert reads <= 2 * (elapsed / interval_s) + 4, (reads, elapsed)
    warnings = [e for e in logs if e["log_level"] == "warning"
                and "X-Consul-Index" in e["event"]]
    assert len(warnings) == (0 if unblock else 1), logs


async def test_an_answer_without_index_is_not_an_index_going_backwards(
        double: ConsulDouble, proxy: _StrippingProxy) -> None:
    """An answer without ``X-Consul-Index`` after ones with it (a proxy that strips it
    now and then) is not taken for an agent that lost its state: an instance deregistered
    then goes at once, not kept for ``fault_grace_s`` (30 s here)."""
    service = unique_service()
    one, two = make_instance(service, 1), make_instance(service, 2)
    proxy.strip = False
    async with ConsulRegistry(_options(double.addr)) as writer, \
            ConsulRegistry(_options(proxy.addr, watch_query_interval_s=0.05,
                                    fault_grace_s=30.0)) as reader:
        await writer.register(one)
        await writer.register(two)
        watch = reader.watch(service)
        try:
            async with asyncio.timeout(5):
                assert len(await anext(watch)) == 2
                proxy.strip = True
                await writer.deregister(one)
                while {i.instance_id for i in await anext(watch)} != {two.instance_id}:
                    pass
            assert reader.status().kept_endpoints == 0
        finally:
            await watch.aclose()
            await writer.deregister(two)
