"""A blank ``OTEL_SERVICE_NAME`` (``" "``: a template's empty value with a space) is
unset, as meshkit reads its other blank variables: before, the SDK's resource detector
took it as the name, so ``serve("orderd")`` (and a dialing process, which passes the
variable on) exported every span under ``service.name=" "``, the service's own name and
``OTEL_RESOURCE_ATTRIBUTES``' one both lost."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace

from meshkit.observability import _tracing


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "MESHKIT_TRACE_FILE",
              "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_PYTHON_ID_GENERATOR",
              "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "  ")


def _name(service_name: str | None) -> Any:
    provider = _tracing.configure_tracing(service_name, exporters=[], set_global=False)
    provider.shutdown()
    return provider.resource.attributes["service.name"]


def test_the_services_own_name_is_used() -> None:
    assert _name("orderd") == "orderd"


def test_no_name_is_the_resource_attributes_one_else_the_sdks_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(_name(None)).startswith("unknown_service")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, "
                       "service.name=order%20d")
    assert _name(None) == "order d"
    assert _name("orderd") == "orderd"


def test_a_dialing_process_leaves_the_name_to_serve(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Any) -> None:
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(tmp_path / "spans.jsonl"))
    slot: list[Any] = []
    monkeypatch.setattr(trace, "get_tracer_provider",
                        lambda: slot[0] if slot else trace.ProxyTracerProvider())
    monkeypatch.setattr(trace, "set_tracer_provider", slot.append)
    monkeypatch.setattr(_tracing, "_unnamed", [])
    provider = _tracing.tracing_from_env("  ")  # a channel passes OTEL_SERVICE_NAME on
    try:
        assert provider is not None
        assert str(provider.resource.attributes["service.name"]).startswith(
            "unknown_service")
        _tracing.tracing_from_env("orderd")  # then serve("orderd")
        assert provider.resource.attributes["service.name"] == "orderd"
    finally:
        provider.shutdown()
