"""An ``OTEL_TRACES_EXPORTER`` exporter whose construction fails (the OTLP exporters raise
for a bad ``OTEL_EXPORTER_OTLP_COMPRESSION``, say) fails ``configure_tracing``, so
``serve()``, with a ``ConfigError`` naming the variable and the exporter: before, its own
exception came out raw (naming neither), and the ``MESHKIT_TRACE_FILE`` already opened
was left open, its descriptor leaked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.errors import ConfigError
from meshkit.observability._tracing import configure_tracing

_MODULE = '''
class Broken:
    def __init__(self):
        raise ValueError("compression 'zstd' is not one of gzip, deflate, none")
'''


@pytest.fixture(autouse=True)
def broken_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on ``sys.path`` with a trace exporter that cannot be built."""
    mod = f"meshkit_test_exporters_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{mod}.py").write_text(_MODULE)
    info = tmp_path / f"{mod}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[opentelemetry_traces_exporter]\nmeshkit_test_broken = {mod}:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER",
              "OTEL_SERVICE_NAME", "OTEL_PYTHON_ID_GENERATOR"):
        monkeypatch.delenv(k, raising=False)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_an_exporter_that_fails_to_build_is_a_config_error_leaving_nothing_open(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,meshkit_test_broken")
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(tmp_path / "spans.jsonl"))
    before = _fds()
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER") as err:
        configure_tracing("orderd", set_global=False)
    assert "meshkit_test_broken" in str(err.value)
    assert "ValueError" in str(err.value)
    assert _fds() - before == set()
