"""A forced drain's in-flight calls are recorded with the code their callers see.

A second SIGTERM/SIGINT during the drain (:meth:`MeshServer._end_drain_now`) stops the
grpc server without grace: grpc core ends the calls in flight and their callers get
``UNAVAILABLE``, but the handler tasks are cancelled, and the server's telemetry counted
each such call ``CANCELLED`` (``grpc_server_handled_total{grpc_code="Canceled"}``, the
access line, the span): the dashboards read a client cancellation where the server cut
the call. Now the calls the stop cuts are recorded ``UNAVAILABLE``; a call its own client
cancels before that is still ``CANCELLED``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions

_APP = "hunt44.ForcedDrain"


def _count(prom: CollectorRegistry, method: str, code: str) -> float:
    return prom.get_sample_value("grpc_server_handled_total", {
        "grpc_service": _APP, "grpc_method": method, "grpc_type": "unary",
        "grpc_code": code}) or 0.0


def _hanging(started: asyncio.Event) -> Any:
    """A unary handler that sets ``started`` and then hangs (600 s)."""
    async def hang(request: bytes, context: Any) -> bytes:
        started.set()
        await asyncio.sleep(600)
        return b"late"
    return hang


def _server(name: str, handlers: dict[str, Any], registry: LocalRegistry,
            prom: CollectorRegistry, *, grace_s: float) -> meshkit.MeshServer:
    """An insecure server ``name`` of the unary ``handlers`` (by method of ``_APP``): no
    drain delay, a ``grace_s`` grace, its metrics in ``prom``."""
    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_APP, {
            method: grpc.unary_unary_rpc_method_handler(handler)
            for method, handler in handlers.items()}),))

    return meshkit.MeshServer(name, [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, admin=None, drain_delay_s=0.0,
                                  grace_s=grace_s,
                                  telemetry=TelemetryOptions(registry=prom, tracing=False,
                                                             access_log=False)))


@pytest.mark.timeout(90)
async def test_a_forced_drain_records_the_code_its_callers_see(
        registry: LocalRegistry) -> None:
    """The hanging call cut by the forced stop: caller UNAVAILABLE, counted Unavailable;
    a call cancelled by its client earlier in the same drain: counted Canceled."""
    prom = CollectorRegistry()
    started: dict[str, asyncio.Event] = {"Hang": asyncio.Event(), "Gone": asyncio.Event()}
    srv = _server("forced", {name: _hanging(event) for name, event in started.items()},
                  registry, prom, grace_s=60.0)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            hang = asyncio.ensure_future(
                channel.unary_unary(f"/{_APP}/Hang")(b"x", timeout=100))
            gone = channel.unary_unary(f"/{_APP}/Gone")(b"x", timeout=100)
            await asyncio.wait_for(started["Hang"].wait(), 20)
            await asyncio.wait_for(started["Gone"].wait(), 20)
            draining = asyncio.ensure_future(srv.drain())
            # well into the grace (the plain channel's calls are not refused: served)
            deadline = asyncio.get_running_loop().time() + 20
            while srv._drain_task is None or not srv.draining:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            gone.cancel()  # its client's own cancellation: CANCELLED, as before
            deadline = asyncio.get_running_loop().time() + 20
            while _count(prom, "Gone", "Canceled") < 1:
                assert asyncio.get_running_loop().time() < deadline, "Gone not counted"
                await asyncio.sleep(0.01)
            srv._end_drain_now(signal.SIGTERM)
            await asyncio.wait_for(draining, 30)  # not the 60 s grace
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(hang, 20)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
        assert _count(prom, "Hang", "Unavailable") == 1.0
        assert _count(prom, "Hang", "Canceled") == 0.0
        assert _count(prom, "Gone", "Canceled") == 1.0
    finally:
        await asyncio.wait_for(srv.drain(), 30)


@pytest.mark.timeout(90)
async def test_a_grace_run_out_records_the_code_its_callers_see(
        registry: LocalRegistry) -> None:
    """A graceful drain whose ``grace_s`` runs out cuts the call still in flight the same
    way (grpc core's cancel-all): the caller sees UNAVAILABLE, and it is counted so."""
    prom = CollectorRegistry()
    started = asyncio.Event()
    srv = _server("graced", {"Hang": _hanging(started)}, registry, prom, grace_s=0.5)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            call = asyncio.ensure_future(
                channel.unary_unary(f"/{_APP}/Hang")(b"x", timeout=100))
            await asyncio.wait_for(started.wait(), 20)
            await asyncio.wait_for(srv.drain(), 30)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 20)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
        assert _count(prom, "Hang", "Unavailable") == 1.0
        assert _count(prom, "Hang", "Canceled") == 0.0
    finally:
        await asyncio.wait_for(srv.drain(), 30)
