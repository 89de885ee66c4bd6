"""``tracing_from_env`` sets nothing up once the application has installed a provider of
its own that is not the OpenTelemetry SDK's (a vendor's implementation of the API, or
``NoOpTracerProvider`` to turn tracing off): the API keeps the first provider for good,
so before, with ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``MESHKIT_TRACE_FILE``) set,
``serve()`` still built an SDK provider and its exporters that could not be installed
("Overriding of current TracerProvider is not allowed"), leaving their batch thread
running and the trace file open for nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from meshkit.observability import _tracing


class VendorProvider(trace.TracerProvider):
    """Another implementation of the OpenTelemetry API's provider."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return trace.NoOpTracer()


@pytest.mark.parametrize("installed", [VendorProvider(), trace.NoOpTracerProvider()])
def test_a_provider_the_application_installed_is_left_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, installed: Any) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(k, raising=False)
    trace_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(trace_file))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: installed)
    tried: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", tried.append)
    before = set(threading.enumerate())
    made = _tracing.tracing_from_env("orderd")
    if made is not None:
        made.shutdown()
    assert made is None and tried == []
    assert not trace_file.exists()
    assert [t.name for t in set(threading.enumerate()) - before] == []


def test_dial_does_not_check_settings_nothing_will_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel's check of the ``OTEL_*`` settings is for the provider
    ``tracing_from_env`` would set up: with the application's own installed there is none
    (before, a value only the SDK's set-up reads failed ``dial()``)."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_sometimes")
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: VendorProvider())
    assert _tracing.tracing_wanted() is True
