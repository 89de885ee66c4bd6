"""The drain goes on when the health servicer's ``enter_graceful_shutdown`` fails."""

from __future__ import annotations

import asyncio

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo, method


class _FailingShutdown(health.aio.HealthServicer):
    """A user's servicer whose ``enter_graceful_shutdown`` (overridden to also tell a
    dependency, say) raises once it has set every status ``NOT_SERVING``."""

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        raise RuntimeError("telling the load shedder failed")


async def test_a_failing_enter_graceful_shutdown_does_not_stop_the_drain(
        registry: LocalRegistry) -> None:
    """The drain's first step, the health servicer's ``enter_graceful_shutdown()``, ran
    unguarded: a user's servicer whose override raised made ``drain()`` raise at once,
    leaving the server registered and serving for good, marked draining (``/readyz``
    503), never stopped (``wait_stopped()`` and a second ``drain()`` waited for ever;
    ``serve()`` never returned after SIGTERM). Now the failure is logged and the drain
    goes on: deregistered, stopped."""
    mine = _FailingShutdown()
    srv = meshkit.MeshServer(
        "failhd", [add_echo("f1"), (health_pb2_grpc.add_HealthServicer_to_server, mine)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="f1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None))
    await srv.start()
    port = srv.port
    try:
        with structlog.testing.capture_logs() as logs:
            drained = await asyncio.wait_for(
                asyncio.gather(srv.drain(), return_exceptions=True), 10)
        assert drained == [None], f"drain() raised: {drained}"
        await asyncio.wait_for(srv.wait_stopped(), 5)
        assert not srv.live and not srv.ready
        assert await registry.instances("failhd") == frozenset()
        assert any("telling the load shedder failed" in str(entry.get("error", ""))
                   for entry in logs), logs
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            try:
                await ch.unary_unary(method("Unary"))(b"x", timeout=2)
                served = True
            except grpc.aio.AioRpcError:
                served = False
        assert not served, "the server still serves after its drain"
        reply = await mine.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        if not srv._stopped.is_set():  # the failing drain left it serving: stop it here
            assert srv._server is not None
            await srv._server.stop(None)
