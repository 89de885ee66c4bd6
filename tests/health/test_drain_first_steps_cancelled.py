"""The drain's first steps (the health servicer's ``enter_graceful_shutdown()``, the
deregistration) cannot leave the server serving for good: not when the servicer's
override raises ``CancelledError`` of its own, nor when the drain's task is cancelled
while they run (``asyncio.run()``'s sweep at the end of a run)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method


class _CancelledShutdown(health.aio.HealthServicer):
    """A user's servicer whose ``enter_graceful_shutdown`` (overridden to also tell a
    dependency) awaits a future that the dependency's client cancelled (closed under it):
    ``CancelledError`` raised in the drain's task, which nobody cancelled."""

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        told = asyncio.get_running_loop().create_future()
        told.cancel()  # the client was closed while the request was pending
        await told


async def _serves(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            await ch.unary_unary(method("Unary"))(b"x", timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return True


async def test_a_cancelled_error_of_the_health_override_does_not_stop_the_drain(
        registry: LocalRegistry) -> None:
    """e5d8beb logs an ``Exception`` of ``enter_graceful_shutdown()`` and drains on;
    ``CancelledError`` is a ``BaseException``, so one the override let out (a future it
    awaited cancelled by its owner, not the drain cancelled) still ended the drain at
    its first step: ``drain()`` raised ``CancelledError``, the server stayed registered
    and serving, marked draining, never stopped (``wait_stopped()`` waited for ever)."""
    mine = _CancelledShutdown()
    srv = meshkit.MeshServer(
        "cancelhd", [add_echo("c1"), (health_pb2_grpc.add_HealthServicer_to_server, mine)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="c1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None))
    await srv.start()
    port = srv.port
    try:
        with structlog.testing.capture_logs() as logs:
            drained = await asyncio.wait_for(
                asyncio.gather(srv.drain(), return_exceptions=True), 10)
        assert drained == [None], f"drain() raised: {drained!r}"
        await asyncio.wait_for(srv.wait_stopped(), 5)
        assert not srv.live and not srv.ready
        assert await registry.instances("cancelhd") == frozenset()
        assert any("enter_graceful_shutdown" in str(e.get("event")) for e in logs), logs
        assert not await _serves(port), "the server still serves after its drain"
    finally:
        if not srv._stopped.is_set():  # the drain left it serving: stop it here
            assert srv._server is not None
            await srv._server.stop(None)


class _SlowDeregister(LocalRegistry):
    """A registry whose deregistration takes long (a Consul agent slow to answer)."""

    def __init__(self, options: LocalOptions, started: threading.Event) -> None:
        super().__init__(options)
        self._started = started

    async def deregister(self, instance: Instance) -> None:
        self._started.set()
        await asyncio.sleep(30)
        await super().deregister(instance)


def test_the_drain_cancelled_while_it_deregisters_still_stops_the_server(
        tmp_path: Path) -> None:
    """``_drain`` stops and closes the server "also when the steps above were cancelled:
    asyncio.run()'s sweep at the end of a run cancels this task", but its ``finally``
    began after the deregistration: a run that ended while a slow deregistration was
    under way (``asyncio.wait_for(server.drain(), 1)`` and return) left the grpc server
    unstopped, its interceptors unclosed, the server live (listed by ``/readyz`` and
    ``/metrics``) and its ``wait_stopped()`` never returning."""
    started = threading.Event()
    out: dict[str, Any] = {}

    async def main() -> None:
        reg = _SlowDeregister(LocalOptions(path=tmp_path / "reg", ttl_s=3.0), started)
        srv = meshkit.MeshServer(
            "sweepd", [add_echo("s1")], registry=reg,
            options=meshkit.ServeOptions(insecure=True, instance_id="s1",
                                         drain_delay_s=0.0, grace_s=1.0, admin=None))
        await srv.start()
        out["srv"] = srv
        # the drain goes on in its own task; the run ends: the sweep cancels it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(srv.drain(), 0.5)

    worker = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "asyncio.run() did not end"
    assert started.is_set()
    srv = out["srv"]
    assert not srv.live, "the server is still live after its drain task was cancelled"
    assert srv._stopped.is_set(), "wait_stopped() would wait for ever"
