"""The numeric ``OTEL_*`` variables the SDK's tracer provider and batch span processor
read (``OTEL_BSP_*``, the span limits): a value the SDK refuses made ``configure_tracing``
(so ``serve()``) fail with a bare ``ValueError`` that names no variable, and ``dial()``
accept it and run without tracing; now both refuse it at construction with a
``ConfigError`` naming the variable and quoting the value, and a queue size smaller than
the default batch (valid on its own) takes the batch down to it."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.errors import ConfigError
from meshkit.observability import configure_tracing
from meshkit.observability._tracing import _tracing_env, tracing_wanted

_VARS = ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE",
         "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_EXPORT_TIMEOUT",
         "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
         "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_EXPORTER",
         "MESHKIT_TRACE_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in _VARS:
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize(("var", "value"), [
    ("OTEL_BSP_MAX_QUEUE_SIZE", "-5"),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
    ("OTEL_BSP_SCHEDULE_DELAY", "0"),
    ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
    ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc"),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1"),
    ("OTEL_SPAN_EVENT_COUNT_LIMIT", "1.5"),
])
def test_bad_numeric_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                var: str, value: str) -> None:
    """configure_tracing, and the check dial() runs, refuse it naming the variable."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var) as err:
        configure_tracing("orderd", exporters=[InMemorySpanExporter()], set_global=False)
    assert repr(value) in str(err.value)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    with pytest.raises(ConfigError, match=var):
        _tracing_env()  # dial()'s check, whatever global provider another test installed
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        with pytest.raises(ConfigError, match=var):
            tracing_wanted()


def test_batch_larger_than_queue_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit batch size over the queue size names both variables."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "200")
    with pytest.raises(ConfigError, match=r"OTEL_BSP_MAX_EXPORT_BATCH_SIZE.*"
                                          r"OTEL_BSP_MAX_QUEUE_SIZE"):
        configure_tracing("orderd", exporters=[InMemorySpanExporter()], set_global=False)


@pytest.mark.parametrize("queue", ["10", " 10 "])
def test_small_queue_alone_takes_the_batch_down(monkeypatch: pytest.MonkeyPatch,
                                                queue: str) -> None:
    """OTEL_BSP_MAX_QUEUE_SIZE=10 alone (under the default batch of 512) is used, the
    batch made 10 too, as the SDK refused it outright."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", queue)
    provider = configure_tracing("orderd", exporters=[InMemorySpanExporter()],
                                 set_global=False)
    try:
        (bsp,) = [p for p in provider._active_span_processor._span_processors
                  if isinstance(p, BatchSpanProcessor)]
        inner = bsp._batch_processor
        assert inner._max_queue_size == 10
        assert inner._max_export_batch_size == 10
    finally:
        provider.shutdown()
