"""Set-up helpers: configure_tracing from OTEL_* variables, the interceptor sets, the trace
renderer and peer parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from meshkit.errors import ConfigError
from meshkit.observability import (
    AttemptSpanInterceptor,
    TelemetryClientInterceptor,
    TelemetryOptions,
    TelemetryServerInterceptor,
    attempt_interceptors,
    client_interceptors,
    configure_tracing,
    load_spans,
    render_trace,
    server_interceptors,
)
from meshkit.observability._semconv import parse_peer


def _exporters(provider: TracerProvider) -> list[object]:
    procs = provider._active_span_processor._span_processors
    return [type(p.span_exporter).__name__ for p in procs]  # type: ignore[attr-defined]


def test_configure_tracing_reads_sampler_exporter_and_service_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_SAMPLER[_ARG], OTEL_TRACES_EXPORTER and service.name are applied."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = configure_tracing("orderd", set_global=False)
    try:
        assert provider.resource.attributes["service.name"] == "orderd"
        assert isinstance(provider.sampler, ParentBased)
        assert isinstance(provider.sampler._root, TraceIdRatioBased)  # type: ignore[attr-defined]
        assert provider.sampler._root.rate == 0.25  # type: ignore[attr-defined]
        assert _exporters(provider) == [ConsoleSpanExporter.__name__]
    finally:
        provider.shutdown()


def test_configure_tracing_none_and_missing_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    """``none`` exports nothing; ``otlp`` without the package warns clearly and exports
    nothing; OTEL_SERVICE_NAME wins over the argument."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    provider = configure_tracing("orderd", set_global=False)
    assert _exporters(provider) == []
    assert provider.resource.attributes["service.name"] == "from-env"
    provider.shutdown()
    pytest.importorskip("opentelemetry.sdk")
    try:
        import opentelemetry.exporter.otlp  # noqa: F401
        pytest.skip("opentelemetry-exporter-otlp is installed")
    except ImportError:
        pass
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    with structlog.testing.capture_logs() as logs:
        provider = configure_tracing("orderd", set_global=False)
    provider.shutdown()
    assert _exporters(provider) == []
    assert any("opentelemetry-exporter-otlp" in ev["event"] and ev["log_level"] == "warning"
               for ev in logs)


@pytest.mark.parametrize(("env", "quoted"), [
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "'sometimes'"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "'2'"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, "'x'"),
    ({"OTEL_TRACES_EXPORTER": "zipkinish"}, "'zipkinish'"),
])
def test_configure_tracing_refuses_bad_env(monkeypatch: pytest.MonkeyPatch,
                                           env: dict[str, str], quoted: str) -> None:
    """Unknown samplers, bad ratios and unknown exporters fail at set-up, quoted."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=quoted):
        configure_tracing("orderd", set_global=False)


def test_configure_tracing_empty_sampler_arg_is_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty OTEL_TRACES_SAMPLER_ARG is an unset one (OTel spec): the ratio sampler
    with the SDK's default ratio 1.0, not a ConfigError that stops the service."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("MESHKIT_TRACE_FILE", raising=False)
    provider = configure_tracing("orderd", exporters=[], set_global=False)
    try:
        assert isinstance(provider.sampler, TraceIdRatioBased)
        assert provider.sampler.rate == 1.0
    finally:
        provider.shutdown()


@pytest.mark.parametrize("name", ["traceidratio ", " TraceIdRatio", "traceidratio\t"])
def test_configure_tracing_padded_sampler_is_the_sampler_named(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A sampler name with blanks or capitals passes meshkit's check, so it must also be
    the sampler used: the SDK alone reads the raw value, does not know it and falls back
    to parentbased_always_on (every trace sampled instead of 1 %)."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("MESHKIT_TRACE_FILE", raising=False)
    provider = configure_tracing("orderd", exporters=[], set_global=False)
    try:
        assert isinstance(provider.sampler, TraceIdRatioBased)
        assert provider.sampler.rate == 0.01
    finally:
        provider.shutdown()


@pytest.mark.parametrize("value", ["", "  "])
def test_configure_tracing_empty_exporter_is_unset(monkeypatch: pytest.MonkeyPatch,
                                                    value: str) -> None:
    """An empty OTEL_TRACES_EXPORTER is an unset one: ``otlp`` (when installed) is asked
    for, not "no exporter"."""
    from meshkit.observability import _tracing

    asked: list[str] = []
    monkeypatch.setattr(_tracing, "_has_otlp", lambda: True)
    monkeypatch.setattr(_tracing, "_exporter", lambda name: asked.append(name))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("MESHKIT_TRACE_FILE", raising=False)
    configure_tracing("orderd", set_global=False).shutdown()
    assert asked == ["otlp"]


def test_interceptor_sets_by_implementation() -> None:
    """The one-call helpers return one fused interceptor per side by default, the OTel
    instrumentation's interceptors with implementation="otel", and refuse others."""
    (srv,) = server_interceptors("orderd")
    assert isinstance(srv, TelemetryServerInterceptor)
    (cli,) = client_interceptors()
    assert isinstance(cli, TelemetryClientInterceptor)
    assert attempt_interceptors() == ()
    (att,) = attempt_interceptors(TelemetryOptions(attempt_spans=True))
    assert isinstance(att, AttemptSpanInterceptor)
    otel_srv = server_interceptors("orderd", implementation="otel")
    assert type(otel_srv[0]).__name__ == "OpenTelemetryAioServerInterceptor"
    assert isinstance(otel_srv[1], TelemetryServerInterceptor)
    assert not otel_srv[1].options.tracing
    assert len(attempt_interceptors(implementation="otel")) == 4
    assert server_interceptors("x", TelemetryOptions(tracing=False),
                               implementation="otel")[0].options.tracing is False  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="'zipkin'"):
        server_interceptors("orderd", implementation="zipkin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="''"):
        server_interceptors("")


def test_render_trace_draws_a_tree_with_timings() -> None:
    """render_trace nests children under parents with kind, offset, duration, status and
    attempt events."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("ecom.v1.OrderService/PlaceOrder", kind=SpanKind.CLIENT,
                                      attributes={"rpc.grpc.status_code": 0,
                                                  "server.address": "orderd"}) as root:
        root.add_event("attempt", {"meshkit.attempt": 1, "meshkit.instance_id": "o1"})
        with tracer.start_as_current_span("ecom.v1.OrderService/PlaceOrder",
                                          kind=SpanKind.SERVER,
                                          attributes={"rpc.grpc.status_code": 0}):
            with tracer.start_as_current_span("ecom.v1.UserService/GetUser",
                                              kind=SpanKind.CLIENT,
                                              attributes={"rpc.grpc.status_code": 5}):
                pass
            with tracer.start_as_current_span("db"):
                pass
    text = render_trace(exporter.get_finished_spans())
    lines = text.splitlines()
    assert lines[0].startswith("ecom.v1.OrderService/PlaceOrder  client  ")
    assert lines[0].endswith("OK  [server.address=orderd]")
    assert lines[1].startswith("   · attempt +") and "instance_id=o1" in lines[1]
    assert lines[2].startswith("└─ ecom.v1.OrderService/PlaceOrder  server  +")
    assert lines[3].startswith("   ├─ ecom.v1.UserService/GetUser  client  +")
    assert "NOT_FOUND" in lines[3]
    assert lines[4].startswith("   └─ db  internal  +")
    assert " ms " in lines[2]
    assert render_trace([]) == ""
    orphans = [s for s in exporter.get_finished_spans() if s.parent is not None]  # no root
    (first, *rest) = render_trace(orphans).splitlines()
    assert first.startswith("ecom.v1.OrderService/PlaceOrder  server  ")
    assert first.endswith("  (parent span not exported)")
    assert not any("not exported" in line for line in rest)
    provider.shutdown()


def test_load_spans_skips_lines_whose_fields_are_malformed(tmp_path: Path) -> None:
    """A line whose documented fields have the wrong type (a ``start_ns`` that is a string,
    ``attributes`` or event ``attributes`` that are a list) is skipped like one that is not
    JSON, so render_trace draws the rest of the file."""
    good = {"trace_id": "0" * 31 + "1", "span_id": "0" * 15 + "2", "parent_span_id": None,
            "name": "ecom.v1.OrderService/PlaceOrder", "kind": "SERVER", "start_ns": 1_000,
            "end_ns": 2_000_000, "status": "OK", "attributes": {},
            "events": [{"name": "attempt", "ts_ns": 1_500, "attributes": {"a": 1}}]}
    bad = [dict(good, span_id="0" * 15 + "3", start_ns="x"),
           dict(good, span_id="0" * 15 + "4", attributes=[1, 2]),
           dict(good, span_id="0" * 15 + "5", end_ns=True),
           dict(good, span_id="0" * 15 + "6", name=7),
           dict(good, span_id="0" * 15 + "7",
                events=[{"name": "e", "ts_ns": 1, "attributes": [1]}]),
           dict(good, span_id="0" * 15 + "8", events={"name": "e"})]
    path = tmp_path / "spans.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in (good, *bad)) + "not json\n[1]\n",
                    encoding="utf-8")
    spans = load_spans([path, tmp_path / "missing.jsonl"])
    assert [s.context.span_id for s in spans] == [2]
    text = render_trace(spans)
    assert text.startswith("ecom.v1.OrderService/PlaceOrder  server  ")
    assert "· attempt +" in text


@pytest.mark.parametrize(("peer", "parsed"), [
    ("ipv4:127.0.0.1:5050", ("127.0.0.1", 5050)),
    ("ipv6:[::1]:5050", ("::1", 5050)),
    ("ipv6:%5B::1%5D:5050", ("::1", 5050)),  # grpc core >= 1.6x percent-encodes
    ("ipv6:%5Bfe80::1%25eth0%5D:5050", ("fe80::1%eth0", 5050)),
    ("unix:/tmp/s.sock", ("/tmp/s.sock", None)),
    (None, (None, None)),
    ("garbage", ("garbage", None)),
])
def test_parse_peer(peer: str | None, parsed: tuple[str | None, int | None]) -> None:
    """grpc peer strings split into address and port."""
    assert parse_peer(peer) == parsed
