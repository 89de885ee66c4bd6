"""Review of bc0cd58f (the same signal a second time ends ``serve()``'s drain now): what a
drain ended so leaves behind.

* A second signal while the drain's deregistration is still under way (a registry that
  is slow to answer) cancelled it, and the server was stopped and closed with its entry
  still listed: mesh clients kept picking a stopped address (connection refused) until
  the registry's TTL expired it, when one more short try, made once the server has
  stopped, takes it out at once whenever the registry answers by then.
* Another signal after the forced end (SIGINT twice, then a process manager's SIGTERM)
  was logged "the drain goes on (this signal again ends it now)", which was no longer
  true: the drain is already ending; logged "already ending it" as the same signal a
  third time is.

The signals are delivered by the loop's own handler (the fan-out every server of the
loop listens to), called here as the signal would, without a real signal.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from meshkit import server as server_module
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.server import MeshServer, ServeOptions
from tests.support.wait import until

_SERVICE = "hunt43rsig.Hang"
_GRACE_S = 60.0


class _SlowFirstDeregistration(LocalRegistry):
    """A local registry whose first ``deregister()`` waits (until cancelled): the
    registry's answer slow while the operator presses Ctrl-C again."""

    def __init__(self, options: LocalOptions) -> None:
        super().__init__(options)
        self.asked = 0
        self.waiting = asyncio.Event()

    async def deregister(self, instance: Instance) -> None:
        self.asked += 1
        if self.asked == 1:
            self.waiting.set()
            await asyncio.sleep(600)
        await super().deregister(instance)


def _signal(sig: signal.Signals) -> None:
    """What the loop's handler does when ``sig`` arrives."""
    fanout = server_module._fanouts[(asyncio.get_running_loop(), sig)]
    fanout.dispatch()


async def _hang(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(600)
    return b"late"


def _server(registry: LocalRegistry) -> MeshServer:
    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Hang": grpc.unary_unary_rpc_method_handler(_hang)})
    return MeshServer(_SERVICE, [(lambda h, server: server.add_generic_rpc_handlers((h,)),
                                  handler)], registry=registry,
                      options=ServeOptions(insecure=True, admin=None, drain_delay_s=0.0,
                                           grace_s=_GRACE_S))


@pytest.mark.timeout(90)
async def test_a_deregistration_cut_by_the_second_signal_is_tried_again_after_the_stop(
        tmp_path: Path) -> None:
    registry = _SlowFirstDeregistration(LocalOptions(
        path=tmp_path / "reg", ttl_s=30.0, heartbeat_interval_s=1.0, poll_interval_s=0.05))
    srv = _server(registry)
    serving = asyncio.ensure_future(srv.run_until_signal())
    try:
        await until(lambda: srv.ready, timeout_s=30, what="the server serving")
        assert len(await registry.instances(_SERVICE)) == 1
        _signal(signal.SIGINT)
        await asyncio.wait_for(registry.waiting.wait(), 30)  # the drain deregistering
        _signal(signal.SIGINT)  # Ctrl-C again: now
        await asyncio.wait_for(serving, 30)  # the deregistration's 10 s, the grace's 60
        await asyncio.wait_for(srv.wait_stopped(), 5)
        left = await registry.instances(_SERVICE)
        assert not left, f"the entry left for the TTL: {left}"
        assert registry.asked == 2
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.wait({serving}, timeout=30)
        await registry.close()


@pytest.mark.timeout(90)
async def test_another_signal_after_the_forced_end_is_not_said_to_let_the_drain_go_on(
        registry: LocalRegistry) -> None:
    srv = _server(registry)
    serving = asyncio.ensure_future(srv.run_until_signal())
    try:
        await until(lambda: srv.ready, timeout_s=30, what="the server serving")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            hang: Any = channel.unary_unary(f"/{_SERVICE}/Hang")
            call = asyncio.ensure_future(hang(b"x", timeout=100))
            await until(lambda: srv.stats().ready, timeout_s=5)
            await asyncio.sleep(0.5)  # the call in flight
            with structlog.testing.capture_logs() as logs:
                _signal(signal.SIGINT)
                await until(lambda: srv.draining, timeout_s=30, what="the drain")
                _signal(signal.SIGINT)  # ends it now
                _signal(signal.SIGTERM)  # a manager's SIGTERM, as the drain ends
                _signal(signal.SIGINT)  # a third Ctrl-C
                await asyncio.wait_for(serving, 30)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.wait({serving}, timeout=30)
    said = [(e["event"], e.get("signal")) for e in logs
            if str(e.get("event", "")).startswith("signal during the drain")]
    assert said == [
        ("signal during the drain: ending it now, in-flight calls cancelled UNAVAILABLE",
         "SIGINT"),
        ("signal during the drain: already ending it", "SIGTERM"),
        ("signal during the drain: already ending it", "SIGINT")], said


@pytest.mark.timeout(90)
async def test_a_forced_end_closes_the_admin_server_and_leaves_no_live_server(
        registry: LocalRegistry) -> None:
    """The forced end stops and closes as a drain does: the admin server (``/readyz``)
    closed, the server out of the live list, ``stats()`` not draining, not registered."""
    from urllib.parse import urlsplit

    from meshkit.observability import AdminOptions

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Hang": grpc.unary_unary_rpc_method_handler(_hang)})
    srv = MeshServer(_SERVICE, [(lambda h, server: server.add_generic_rpc_handlers((h,)),
                                 handler)], registry=registry,
                     options=ServeOptions(insecure=True, admin=AdminOptions(port=0),
                                          drain_delay_s=0.0, grace_s=_GRACE_S))
    serving = asyncio.ensure_future(srv.run_until_signal())
    try:
        await until(lambda: srv.ready, timeout_s=30, what="the server serving")
        assert srv.admin is not None
        port = urlsplit(srv.admin.url).port
        assert port, srv.admin.url
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            hang: Any = channel.unary_unary(f"/{_SERVICE}/Hang")
            call = asyncio.ensure_future(hang(b"x", timeout=100))
            await asyncio.sleep(0.5)
            _signal(signal.SIGTERM)
            await until(lambda: srv.draining, timeout_s=30, what="the drain")
            _signal(signal.SIGTERM)
            await asyncio.wait_for(serving, 30)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 30)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(OSError):  # the admin listener closed
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10)
            writer.close()
        assert not srv.live
        stats = srv.stats()
        assert not stats.draining and not stats.registered and not stats.ready
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.wait({serving}, timeout=30)


class _HangingRegistration(LocalRegistry):
    """A local registry whose ``register()`` waits (until cancelled): a start that is
    still under way when the signals come."""

    def __init__(self, options: LocalOptions) -> None:
        super().__init__(options)
        self.registering = asyncio.Event()

    async def register(self, instance: Instance) -> None:
        self.registering.set()
        await asyncio.sleep(600)


@pytest.mark.timeout(90)
async def test_a_second_signal_while_the_start_is_under_way_ends_it_all_the_same(
        tmp_path: Path) -> None:
    """SIGINT while the start registers (stops the start, undone), SIGINT again while
    that goes on: ``run_until_signal`` returns, nothing registered, the server stopped."""
    registry = _HangingRegistration(LocalOptions(
        path=tmp_path / "reg", ttl_s=30.0, heartbeat_interval_s=1.0, poll_interval_s=0.05))
    srv = _server(registry)
    serving = asyncio.ensure_future(srv.run_until_signal())
    try:
        await asyncio.wait_for(registry.registering.wait(), 30)
        _signal(signal.SIGINT)
        _signal(signal.SIGINT)
        await asyncio.wait_for(serving, 30)
        await asyncio.wait_for(srv.wait_stopped(), 5)
        assert not srv.live
        assert not await registry.instances(_SERVICE)
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.wait({serving}, timeout=30)
        await registry.close()
