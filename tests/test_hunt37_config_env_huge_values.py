"""Environment variables holding a huge number fail at construction with a ConfigError
naming the variable, as any other bad value does:

* ``MESHKIT_ADMIN_PORT`` of more than 4,300 digits made ``ServeOptions()`` (so ``serve()``)
  raise Python's bare ``ValueError: Exceeds the limit (4300 digits) for integer string
  conversion``, naming no variable;
* ``OTEL_BSP_MAX_QUEUE_SIZE`` past ``sys.maxsize`` made ``configure_tracing`` raise a bare
  ``OverflowError`` from the SDK's queue;
* ``OTEL_BSP_SCHEDULE_DELAY`` past ``threading.TIMEOUT_MAX`` seconds was taken, and the
  batch span processor's export thread died at its first wait: no span was exported
  until shutdown, nothing said but a thread traceback.
"""

from __future__ import annotations

import threading
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit import ServeOptions
from meshkit.errors import ConfigError
from meshkit.observability import configure_tracing

_OTEL = ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE",
         "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_TRACES_SAMPLER",
         "OTEL_TRACES_EXPORTER", "MESHKIT_TRACE_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT",
         "OTEL_SDK_DISABLED")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (*_OTEL, "MESHKIT_ADMIN_PORT", "MESHKIT_ADMIN_HOST"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("value", ["1" * 5000, "0" * 4999 + "1", "9" * 30],
                         ids=["5000-digits", "leading-zeros", "30-digits"])
def test_a_huge_admin_port_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                             value: str) -> None:
    """ServeOptions() refuses it naming MESHKIT_ADMIN_PORT, never a bare ValueError."""
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", value)
    if value.lstrip("0") == "1":  # 4999 zeros and a 1: port 1, as int() reads it
        assert ServeOptions(insecure=True).admin.port == 1
        return
    with pytest.raises(ConfigError, match="MESHKIT_ADMIN_PORT must be a port number"):
        ServeOptions(insecure=True)


def test_admin_ports_in_range_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """0, 65535 and a zero-padded port are read as before."""
    for text, port in (("0", 0), (" 65535 ", 65535), ("08080", 8080)):
        monkeypatch.setenv("MESHKIT_ADMIN_PORT", text)
        assert ServeOptions(insecure=True).admin.port == port
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", "65536")
    with pytest.raises(ConfigError, match="MESHKIT_ADMIN_PORT"):
        ServeOptions(insecure=True)


@pytest.mark.parametrize("var", ["OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_SCHEDULE_DELAY",
                                 "OTEL_BSP_EXPORT_TIMEOUT"])
def test_a_huge_batch_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                var: str) -> None:
    """configure_tracing refuses it naming the variable, before any thread starts."""
    monkeypatch.setenv(var, "99999999999999999999")
    before = threading.active_count()
    with pytest.raises(ConfigError, match=var):
        configure_tracing("orderd", exporters=[InMemorySpanExporter()], set_global=False)
    assert threading.active_count() <= before


def test_a_long_schedule_delay_still_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A day's delay (large, in range) is taken, and force_flush exports the span."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", str(24 * 3600 * 1000))
    exporter = InMemorySpanExporter()
    provider = configure_tracing("orderd", exporters=[exporter], set_global=False)
    try:
        with provider.get_tracer("t").start_as_current_span("one"):
            pass
        time.sleep(0.05)  # the export thread has started its wait (and lives on)
        assert provider.force_flush(10_000)
        assert [s.name for s in exporter.get_finished_spans()] == ["one"]
    finally:
        provider.shutdown()
