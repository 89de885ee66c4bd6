"""``OTEL_TRACES_EXPORTER=none`` beside an ``OTEL_EXPORTER_OTLP_ENDPOINT`` (shared by
every signal: set for metrics or logs) asks for no trace export: the process must not set
an SDK tracer provider up (which builds and drops every sampled span) nor, without the
SDK, refuse to start for want of it. Before, the endpoint alone counted as asking."""

from __future__ import annotations

import pytest

from meshkit.observability._tracing import tracing_wanted


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "MESHKIT_TRACE_FILE",
              "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("exporter", ["none", " None ", "none,none"])
@pytest.mark.parametrize("endpoint_var", ["OTEL_EXPORTER_OTLP_ENDPOINT",
                                          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_exporter_none_with_an_endpoint_asks_nothing(
        monkeypatch: pytest.MonkeyPatch, exporter: str, endpoint_var: str) -> None:
    """An explicit ``none`` wins over an OTLP endpoint."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
    monkeypatch.setenv(endpoint_var, "http://127.0.0.1:4317")
    assert tracing_wanted() is False


def test_endpoint_alone_and_trace_file_still_ask(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: object) -> None:
    """Unset exporter with an endpoint, and MESHKIT_TRACE_FILE (meshkit's own file, beside
    ``none``), still ask for tracing."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert tracing_wanted() is True
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("MESHKIT_TRACE_FILE", "spans.jsonl")
    assert tracing_wanted() is True
