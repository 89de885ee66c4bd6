"""A unary request that grpc core refuses while the request gate reads it (over the
server's ``grpc.max_receive_message_length``, or a gzip message inflating past it: a zip
bomb), or whose caller leaves before sending it, is not a request cardinality violation.

grpc.aio's server-side ``context.read()`` answers ``EOF`` both when the client
half-closed without a message and when grpc core failed the read (the call is then
ended by core: ``RESOURCE_EXHAUSTED`` "Received message larger than max" to the caller,
as a plain grpc.aio server answers, PROTOCOL-HTTP2.md / statuscodes.md). The gate took
every ``EOF`` for "request message missing": it counted the call in
``RequestGate.cardinality`` (``meshkit_server_gate_refusals_total{reason="cardinality"}``)
and warned "refused calls with no request message or more than one (a proto that differs
between client and server?)", sending an operator after a proto mismatch that does not
exist, for every oversized request and every caller that gave up early (cancelled, or
whose deadline passed before its request was in)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo, method, method_handlers

_MAX = 64 * 1024  # the servers' max receive size here (small: quick to exceed)
_OPTS = (("grpc.max_receive_message_length", _MAX),)


def _health_request(size: int) -> bytes:
    """A serialized HealthCheckRequest whose service name is ``size`` zero bytes."""
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckRequest(service="\0" * size).SerializeToString()


@contextlib.asynccontextmanager
async def _servers(registry: LocalRegistry) -> AsyncIterator[tuple[int, meshkit.MeshServer]]:
    """A plain grpc.aio echo server and a meshkit one, both receiving at most ``_MAX``."""
    plain = grpc.aio.server(options=_OPTS)
    plain.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "meshkit.test.Echo", method_handlers("plain")),))
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), plain)
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()
    mesh = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
                                  limits=meshkit.ServerLimits(max_receive_message_bytes=_MAX)))
    await mesh.start()
    try:
        yield port, mesh
    finally:
        await plain.stop(None)
        await mesh.drain()


_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


async def _unary(port: int, request: bytes, name: str = "Unary",
                 **kw: Any) -> tuple[grpc.StatusCode, str]:
    """Call ``name`` (an echo method, or the health ``Check``) with ``request``; a
    server-streaming one is read to its end."""
    path = name if name.startswith("/") else method(name)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            if name == "ServerStream":
                async for _ in ch.unary_stream(path)(request, timeout=10, **kw):
                    pass
            else:
                await ch.unary_unary(path)(request, timeout=10, **kw)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


_CASES = {
    "oversized": (b"x" * (_MAX + 1), {}),
    "zip-bomb": (b"\0" * (8 * _MAX), {"compression": grpc.Compression.Gzip}),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["Unary", "ServerStream", _HEALTH_CHECK],
                         ids=["unary", "server-stream", "health-check"])
@pytest.mark.parametrize("case", list(_CASES))
async def test_a_request_core_refuses_is_not_counted_a_cardinality_violation(
    registry: LocalRegistry, case: str, name: str,
) -> None:
    """Through each of the gate's reads: a unary method's, a server-streaming one's, and
    the health ``Check``'s (which reads without a permit, in a reserved place)."""
    request, kw = _CASES[case]
    if name == _HEALTH_CHECK:  # a HealthCheckRequest: field 1 (service), a string
        request = _health_request(len(request))
    async with _servers(registry) as (plain_port, mesh):
        with structlog.testing.capture_logs() as logs:
            plain = [await _unary(plain_port, request, name, **kw) for _ in range(5)]
            mesh_got = [await _unary(mesh.port, request, name, **kw) for _ in range(5)]
            # a legitimate small request still passes the gate afterwards
            ok = await _unary(mesh.port, b"fine")
        gate = mesh.gate
        assert gate is not None
        counts = (gate.cardinality, gate.shed, gate.timed_out, gate.evicted)
        stats = mesh.stats()
    # the caller sees what a plain grpc.aio server answers: core's RESOURCE_EXHAUSTED
    assert {c for c, _ in plain} == {grpc.StatusCode.RESOURCE_EXHAUSTED}, plain
    assert mesh_got == plain, (mesh_got, plain)
    assert "larger than max" in plain[0][1], plain
    assert ok == (grpc.StatusCode.OK, ""), ok
    # and the server does not call it a proto mismatch
    assert counts == (0, 0, 0, 0), counts
    assert stats.gate_cardinality == 0, stats
    warned = [e for e in logs if "no request message" in str(e.get("event"))]
    assert not warned, warned


@pytest.mark.timeout(60)
@pytest.mark.parametrize("leaves", ["cancel", "deadline"])
async def test_a_caller_leaving_before_its_request_is_not_a_cardinality_violation(
    registry: LocalRegistry, leaves: str,
) -> None:
    """A client (a streaming stub on the unary method, as a proxy forwards) that cancels
    before its request message, or whose deadline passes first (a slow upload): the
    call is the caller's to end, not a proto mismatch."""
    async with _servers(registry) as (_plain_port, mesh):
        with structlog.testing.capture_logs() as logs:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as ch:
                for _ in range(5):
                    async def later() -> AsyncIterator[bytes]:
                        await asyncio.sleep(30)
                        yield b"never"

                    timeout = 20.0 if leaves == "cancel" else 0.5
                    call = ch.stream_unary(method("Unary"))(later(), timeout=timeout)
                    # the server has the call: wait until the gate holds its slot
                    for _ in range(500):
                        if mesh.gate is not None and mesh.gate.slots:
                            break
                        await asyncio.sleep(0.01)
                    if leaves == "cancel":
                        call.cancel()
                    else:
                        with pytest.raises(grpc.aio.AioRpcError) as info:
                            await call
                        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                    for _ in range(500):
                        if mesh.gate is not None and not mesh.gate.slots:
                            break
                        await asyncio.sleep(0.01)
        gate = mesh.gate
        assert gate is not None
        assert gate.slots == 0
        counts = (gate.cardinality, gate.shed, gate.timed_out, gate.evicted)
    assert counts == (0, 0, 0, 0), counts
    warned = [e for e in logs if "no request message" in str(e.get("event"))]
    assert not warned, warned
