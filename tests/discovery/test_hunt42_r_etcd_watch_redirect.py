"""EtcdRegistry (review of 03ebca05): a watch stream's request follows no redirect either.

03ebca05 made every call (``_post_call``) and the watch stream's request refuse to follow
a redirect; its test covers the calls (services(), register()) only, so the watch's
``allow_redirects=False`` could go without a test failing. Followed, a 307/308 to
``/v3/watch`` re-sends the watch's body to the redirect's target, and the registry would
read that host's stream as the member's events (instances from elsewhere). A proxy on
127.0.0.1 in front of a real etcd that answers ``/v3/watch`` with a redirect, and a
second server recording what reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("status", [307, 308], ids=["307", "308"])
async def test_a_watch_follows_no_redirect(node: EtcdCluster, status: int) -> None:
    seen: list[bytes] = []
    watches: list[int] = []
    retried = asyncio.Event()  # the stream tried again after backoff
    upstream = node.endpoints[0]

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(status=503)

    async def proxy(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/watch"):
            watches.append(1)
            if len(watches) >= 3:
                retried.set()
            return web.Response(status=status, headers={
                "Location": f"http://127.0.0.1:{other_port}{request.path}"})
        async with aiohttp.ClientSession() as client, client.post(
                f"{upstream}{request.path}", data=await request.read(),
                headers={"Content-Type": "application/json"}) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type="application/json")

    runners = []
    try:
        ports = []
        for handler in (elsewhere, proxy):
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            ports.append(runner.addresses[0][1])
        other_port, port = ports
        service = unique_service()
        async with EtcdRegistry(EtcdOptions(endpoints=(upstream,))) as owner:
            await owner.register(make_instance(service, 1))
            async with EtcdRegistry(EtcdOptions(
                    endpoints=(f"http://127.0.0.1:{port}",), request_timeout_s=1.0,
                    backoff_base_s=0.05, backoff_max_s=0.2)) as registry:
                watcher = Collector(registry, service)
                try:
                    # the first read goes through the proxy; its stream is refused
                    assert await watcher.next(timeout_s=10) == {make_instance(service, 1)}
                    async with asyncio.timeout(10):
                        await retried.wait()
                finally:
                    await watcher.stop()
            await owner.deregister(make_instance(service, 1))
    finally:
        for runner in runners:
            await runner.cleanup()
    assert seen == [], seen
