"""A handler that raises :class:`meshkit.auth.PermissionDeniedError` or
:class:`meshkit.auth.UnauthenticatedError` (its own refusal, or a shared auth helper's it
lets escape, as a custom verifier's are answered) refuses its caller with that status and
details, counted so in ``grpc_server_handled_total``; before, the caller got ``UNKNOWN``
"Unexpected PermissionDeniedError in the handler" and the server logged a traceback. Any
other ``AioRpcError`` a handler lets escape (a downstream call's ``PERMISSION_DENIED``) is
still ``UNKNOWN``; a meshkit client's ``NoEndpointsError`` (``UNAVAILABLE``: the
dependency is down) is a downstream refusal, answered ``RESOURCE_EXHAUSTED`` "a call the
handler made was refused (UNAVAILABLE)" with the trailer ``meshkit-downstream-status``
(e927beae), not counted against this server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import PermissionDeniedError, UnauthenticatedError
from meshkit.discovery import LocalRegistry
from meshkit.errors import NoEndpointsError
from meshkit.observability import TelemetryOptions

APP = "meshkit.test.Refuse"


async def test_a_handler_refusal_keeps_its_status(registry: LocalRegistry,
                                                  prom: CollectorRegistry) -> None:
    async def deny(request: bytes, context: Any) -> bytes:
        raise PermissionDeniedError("not your order")

    async def unauth(request: bytes, context: Any) -> bytes:
        raise UnauthenticatedError("session expired")

    async def downstream(request: bytes, context: Any) -> bytes:
        raise grpc.aio.AioRpcError(grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), details="downstream said no")

    async def no_endpoints(request: bytes, context: Any) -> bytes:
        raise NoEndpointsError("stock")

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(APP, {
            name: grpc.unary_unary_rpc_method_handler(h)
            for name, h in (("Deny", deny), ("Unauth", unauth), ("Down", downstream),
                            ("NoEndpoints", no_endpoints))}),))

    srv = meshkit.MeshServer("refuse", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="r1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=TelemetryOptions(
                                     registry=prom, tracing=False, access_log=False)))
    await srv.start()
    ch = meshkit.dial("refuse", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=None))
    try:
        await ch.wait_for_endpoints(1)
        got = {}
        for name in ("Deny", "Unauth", "Down", "NoEndpoints"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(f"/{APP}/{name}")(b"x", timeout=5)
            got[name] = (err.value.code(), err.value.details())
            if name == "NoEndpoints":
                trailers = tuple(err.value.trailing_metadata() or ())
    finally:
        await ch.close()
        await srv.drain()
    assert got["Deny"] == (grpc.StatusCode.PERMISSION_DENIED, "not your order")
    assert got["Unauth"] == (grpc.StatusCode.UNAUTHENTICATED, "session expired")
    assert got["Down"][0] is grpc.StatusCode.UNKNOWN
    assert "downstream said no" not in (got["Down"][1] or "")
    assert got["NoEndpoints"] == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  "a call the handler made was refused (UNAVAILABLE)")
    assert ("meshkit-downstream-status", "UNAVAILABLE") in trailers
    for method, code in (("Deny", "PermissionDenied"), ("Unauth", "Unauthenticated"),
                         ("Down", "Unknown"), ("NoEndpoints", "ResourceExhausted")):
        assert prom.get_sample_value("grpc_server_handled_total", {
            "grpc_service": APP, "grpc_method": method, "grpc_type": "unary",
            "grpc_code": code}) == 1.0, method
