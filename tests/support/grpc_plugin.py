"""An idle grpc observability plugin, for the code paths that depend on one being active."""

from __future__ import annotations

from typing import Any

import pytest
from grpc import _observability


class IdlePlugin(_observability.ObservabilityPlugin):
    """A registered plugin with stats and tracing off: grpc asks it for nothing."""

    def create_client_call_tracer(self, method_name: bytes, target: bytes) -> Any:
        raise AssertionError("not enabled")

    def save_trace_context(self, trace_id: str, span_id: str, is_sampled: bool) -> None:
        raise AssertionError("not enabled")

    def create_server_call_tracer_factory(self, *, xds: bool = False) -> Any:
        raise AssertionError("not enabled")

    def record_rpc_latency(self, method: str, target: str, rpc_latency: float,
                           status_code: Any) -> None:
        raise AssertionError("not enabled")


def activate(monkeypatch: pytest.MonkeyPatch) -> IdlePlugin:
    """Register an :class:`IdlePlugin` as grpc's plugin for the rest of the test."""
    plugin = IdlePlugin()
    monkeypatch.setattr(_observability, "_OBSERVABILITY_PLUGIN", plugin)
    return plugin
