"""Whether a call builds an access line at all (``access_mode``, the JSON access log's
answer read inline by the interceptors): with logging unconfigured the standard library's
``meshkit.access`` decides, and a call whose line nobody would write builds none; with
``INFO`` on it each call's line is built once and written there."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.observability import (
    TelemetryClientInterceptor,
    TelemetryOptions,
    TelemetryServerInterceptor,
    _client,
    _logging,
    _server,
)
from meshkit.observability._logging import _AccessLog
from tests.support.contexts import ServedContext as _ServedContext


async def _serve_one() -> None:
    icpt = TelemetryServerInterceptor(
        "echo", TelemetryOptions(registry=CollectorRegistry(), tracing=False)
    )

    async def unary(request: bytes, context: Any) -> bytes:
        return request

    handler = icpt.resolve("/meshkit.test.Echo/Unary", grpc.unary_unary_rpc_method_handler(unary))
    assert handler is not None and handler.unary_unary is not None
    assert await handler.unary_unary(b"hi", _ServedContext()) == b"hi"


async def _call_one() -> None:
    icpt = TelemetryClientInterceptor(TelemetryOptions(registry=CollectorRegistry(), tracing=False))

    async def proceed(details: Any, request: Any) -> Any:
        return request

    details = ClientCallDetails(
        service="echo",
        method="/meshkit.test.Echo/Unary",
        kind=CallKind.UNARY_UNARY,
        timeout_s=5,
        metadata=(),
    )
    assert await icpt.intercept_unary(details, b"hi", proceed) == b"hi"


@pytest.mark.parametrize("enabled", [False, True], ids=["info-off", "info-on"])
@pytest.mark.parametrize("side", ["server", "client"])
async def test_unconfigured_logging_builds_a_line_only_when_info_is_on(
    side: str, enabled: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_AccessLog, "logger", None)
    monkeypatch.setattr(_logging, "_structlog_configured", lambda: False)
    built: list[str] = []
    event = _server._ServerAccess if side == "server" else _client._ClientAccess
    real = event.fields

    def fields(self: Any, *args: Any) -> dict[str, Any]:
        built.append(side)
        return real(self, *args)

    monkeypatch.setattr(event, "fields", fields)
    caplog.set_level(logging.INFO if enabled else logging.WARNING, logger="meshkit.access")
    await (_serve_one() if side == "server" else _call_one())
    for _ in range(4):  # a deferred completion's turns
        await asyncio.sleep(0)
    lines = [r for r in caplog.records if r.name == "meshkit.access"]
    assert built == ([side] if enabled else [])
    assert len(lines) == (1 if enabled else 0)
