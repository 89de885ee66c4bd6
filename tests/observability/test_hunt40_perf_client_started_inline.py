"""A client's unary call counts itself started and in flight (the bound record's
``start()``, inline in the unary step): ``grpc_client_started_total`` 1 and
``grpc_client_in_flight`` 1 while it runs, in flight 0 once it ended, OK or failed."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.observability import TelemetryClientInterceptor, TelemetryOptions

_LABELS = {"grpc_service": "meshkit.test.Echo", "grpc_method": "Unary", "grpc_type": "unary"}


@pytest.mark.parametrize("fails", [False, True], ids=["ok", "unavailable"])
async def test_a_unary_call_is_started_and_in_flight_while_it_runs(fails: bool) -> None:
    registry = CollectorRegistry()
    icpt = TelemetryClientInterceptor(
        TelemetryOptions(registry=registry, tracing=False, access_log=False)
    )

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name, _LABELS)

    during: list[tuple[float | None, float | None]] = []

    async def proceed(details: Any, request: Any) -> Any:
        during.append((sample("grpc_client_started_total"), sample("grpc_client_in_flight")))
        if fails:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )
        return request

    details = ClientCallDetails(
        service="echo",
        method="/meshkit.test.Echo/Unary",
        kind=CallKind.UNARY_UNARY,
        timeout_s=5,
        metadata=(),
    )
    if fails:
        with pytest.raises(grpc.aio.AioRpcError):
            await icpt.intercept_unary(details, b"hi", proceed)
    else:
        assert await icpt.intercept_unary(details, b"hi", proceed) == b"hi"
    assert during == [(1.0, 1.0)]
    assert sample("grpc_client_started_total") == 1.0
    assert sample("grpc_client_in_flight") == 0.0
    code = "Unavailable" if fails else "OK"
    assert (
        registry.get_sample_value("grpc_client_handled_total", {**_LABELS, "grpc_code": code})
        == 1.0
    )
