"""``OTEL_TRACES_EXPORTER`` holding no name (``","``, ``" , "``: a template's two empty
values) is unset, for ``configure_tracing`` as for the check that asks for tracing:
before, the check read it as unset (an OTLP endpoint then asked for tracing) while
``configure_tracing`` read it as an explicit empty list, so the provider it set up had no
exporter at all and every span was built and dropped."""

from __future__ import annotations

import pytest

from meshkit.observability import _tracing


@pytest.mark.parametrize("value", [",", " , ", ",,"])
def test_a_list_of_no_names_is_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    for k in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "MESHKIT_TRACE_FILE",
              "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_PYTHON_ID_GENERATOR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert _tracing.tracing_wanted() is True
    asked: list[str] = []
    monkeypatch.setattr(_tracing, "_exporter", lambda name: asked.append(name))
    _tracing.configure_tracing("orderd", set_global=False).shutdown()
    assert asked == ["otlp"]  # as with the variable unset: the endpoint's exporter
