"""A handler that raises :class:`meshkit.auth.PermissionDeniedError` or
:class:`meshkit.auth.UnauthenticatedError` refuses its caller with that status and details
on a server with ``ServeOptions(expose_exception_text=True)`` too (a development server
is no reason to answer a refusal otherwise); before, grpc.aio answered ``UNKNOWN``
"Unexpected <class 'meshkit.auth._errors.PermissionDeniedError'>: ..." there, and
telemetry counted the call ``Unknown``. Any other exception is still answered grpc.aio's
way in that mode (``UNKNOWN`` with its text), a unary ``None`` too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import PermissionDeniedError, UnauthenticatedError
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions

APP = "meshkit.test.ExposedRefuse"


@pytest.fixture
def prom() -> CollectorRegistry:
    """A private Prometheus registry for one test."""
    return CollectorRegistry()


async def _deny(request: bytes, context: Any) -> bytes:
    raise PermissionDeniedError("not your order")


async def _unauth(request: bytes, context: Any) -> bytes:
    raise UnauthenticatedError("session expired")


async def _boom(request: bytes, context: Any) -> bytes:
    raise KeyError("the text")


async def _deny_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"one"
    raise PermissionDeniedError("not this stream")


async def _none_stream(request: bytes, context: Any) -> AsyncIterator[bytes | None]:
    yield b"a"
    yield None  # grpc.aio sends an empty message and goes on
    yield b"b"


def _sync_deny(request: bytes, context: Any) -> bytes:
    raise PermissionDeniedError("not from a thread either")


def _add(_servicer: Any, server: Any) -> None:
    handlers = {name: grpc.unary_unary_rpc_method_handler(h) for name, h in (
        ("Deny", _deny), ("Unauth", _unauth), ("Boom", _boom), ("SyncDeny", _sync_deny))}
    handlers["DenyStream"] = grpc.unary_stream_rpc_method_handler(_deny_stream)
    handlers["NoneStream"] = grpc.unary_stream_rpc_method_handler(_none_stream)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(APP, handlers),))


async def _calls(registry: LocalRegistry, telemetry: TelemetryOptions | None,
                 ) -> dict[str, tuple[grpc.StatusCode, str]]:
    srv = meshkit.MeshServer("xrefuse", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="x1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=telemetry,
                                 expose_exception_text=True))
    await srv.start()
    ch = meshkit.dial("xrefuse", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=None))
    got: dict[str, tuple[grpc.StatusCode, str]] = {}
    try:
        await ch.wait_for_endpoints(1)
        for name in ("Deny", "Unauth", "Boom", "SyncDeny"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(f"/{APP}/{name}")(b"x", timeout=10)
            got[name] = (err.value.code(), err.value.details() or "")
        call = ch.unary_stream(f"/{APP}/DenyStream")(b"x", timeout=10)
        first = await call.read()
        assert first == b"one"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        got["DenyStream"] = (err.value.code(), err.value.details() or "")
        none_stream = ch.unary_stream(f"/{APP}/NoneStream")(b"x", timeout=10)
        assert [m async for m in none_stream] == [b"a", b"", b"b"]  # as grpc.aio
        assert await none_stream.code() is grpc.StatusCode.OK
    finally:
        await ch.close()
        await srv.drain()
    return got


def _check(got: dict[str, tuple[grpc.StatusCode, str]]) -> None:
    assert got["Deny"] == (grpc.StatusCode.PERMISSION_DENIED, "not your order")
    assert got["Unauth"] == (grpc.StatusCode.UNAUTHENTICATED, "session expired")
    assert got["SyncDeny"] == (grpc.StatusCode.PERMISSION_DENIED, "not from a thread either")
    assert got["DenyStream"] == (grpc.StatusCode.PERMISSION_DENIED, "not this stream")
    # anything else: grpc.aio's answer, text and all (what the option is for)
    assert got["Boom"][0] is grpc.StatusCode.UNKNOWN
    assert "the text" in got["Boom"][1]


async def test_refusals_keep_their_status_with_telemetry(registry: LocalRegistry,
                                                        prom: CollectorRegistry) -> None:
    """With telemetry, the refusal is answered and counted with its own code."""
    got = await _calls(registry, TelemetryOptions(registry=prom, tracing=False,
                                                  access_log=False))
    _check(got)
    for method, code in (("Deny", "PermissionDenied"), ("Unauth", "Unauthenticated"),
                         ("Boom", "Unknown"), ("DenyStream", "PermissionDenied")):
        kind = "server_stream" if method == "DenyStream" else "unary"
        assert prom.get_sample_value("grpc_server_handled_total", {
            "grpc_service": APP, "grpc_method": method, "grpc_type": kind,
            "grpc_code": code}) == 1.0, method


async def test_refusals_keep_their_status_without_telemetry(registry: LocalRegistry) -> None:
    """With no check and no telemetry at all (nothing else wraps the handler), too."""
    _check(await _calls(registry, None))
