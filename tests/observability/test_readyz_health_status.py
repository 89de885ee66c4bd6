"""/readyz follows the gRPC health status the application sets on its server.

An application marks its server not serving (``MeshServer.health.set("",
NOT_SERVING)``, or the mesh service name; a dependency down, a cache warming) and every
gRPC health client, Consul's GRPC check and gRFC A17 clients stop sending it calls; but
``/readyz``, which a Kubernetes readiness probe or a load balancer's HTTP check reads,
said 200 (registered and not draining), so those kept routing to it. ``/readyz`` (plain
and ``?service=``) is now 503 with reason ``not serving`` while ``""`` or the mesh service
name is not SERVING, and 200 again once it is; a gRPC service of the server set
NOT_SERVING alone leaves the server ready (it still serves its other services). Real
MeshServer, real admin server.
"""

from __future__ import annotations

import json

import aiohttp
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import AdminOptions, AdminServer
from tests.support.echo import SERVICE, add_echo

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, json.loads(await resp.text())


async def test_readyz_follows_the_servers_health_status(registry: LocalRegistry) -> None:
    admin = AdminServer(AdminOptions(registry=CollectorRegistry()))
    port = await admin.start()
    base = f"http://127.0.0.1:{port}"
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.5))
    try:
        await srv.start()
        assert (await _get(base + "/readyz"))[0] == 200
        assert (await _get(base + "/readyz?service=echo"))[0] == 200
        for name in ("", "echo"):
            await srv.health.set(name, NOT_SERVING)
            status, body = await _get(base + "/readyz")
            assert status == 503 and body["reason"] == "not serving", (name, body)
            status, body = await _get(base + "/readyz?service=echo")
            assert status == 503 and body["reason"] == "not serving", (name, body)
            assert not srv.ready and not srv.stats().serving
            await srv.health.set(name, SERVING)
            assert (await _get(base + "/readyz"))[0] == 200, name
            assert srv.ready
        # one gRPC service of the server not serving: the server still serves the others
        await srv.health.set(SERVICE, NOT_SERVING)
        assert (await _get(base + "/readyz"))[0] == 200
    finally:
        await srv.drain()
        await admin.stop()
