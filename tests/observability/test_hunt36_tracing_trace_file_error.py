"""A ``MESHKIT_TRACE_FILE`` that cannot be opened fails ``configure_tracing`` (so
``serve()``) with a ``ConfigError`` naming the variable and the path, before any exporter
is set up: before, the raw ``OSError`` (``FileExistsError: [Errno 17] File exists``,
naming neither) came after the ``OTEL_TRACES_EXPORTER`` exporters' batch processors had
started, and their threads were left running."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from meshkit.errors import ConfigError
from meshkit.observability._tracing import configure_tracing


def test_an_unopenable_trace_file_is_a_config_error_with_nothing_left_running(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER",
              "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "afile").write_text("")
    bad = tmp_path / "afile" / "spans.jsonl"  # under a file, not a directory
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(bad))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="MESHKIT_TRACE_FILE") as err:
        configure_tracing("orderd", set_global=False)
    assert str(bad) in str(err.value)
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
