"""Set-up helpers: configure_tracing from OTEL_* variables, the interceptor sets, the trace
renderer and peer parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
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
from meshkit.observability._tracing import tracing_wanted

_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("env", "variable", "quoted"), [
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
     "OTEL_TRACES_SAMPLER_ARG", "'1.5'"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER", "'sometimes'"),
    ({"OTEL_TRACES_EXPORTER": "console,zipkinish"}, "OTEL_TRACES_EXPORTER", "'zipkinish'"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_PROTOCOL", "'http/json'"),
], ids=["sampler-arg-out-of-range", "unknown-sampler", "unknown-exporter",
        "unsupported-otlp-protocol"])
async def test_dial_refuses_a_bad_otel_env_like_serve(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str],
        variable: str, quoted: str) -> None:
    """A process that only dials (a job, a gateway, ``meshkit call``), tracing asked for
    (``MESHKIT_TRACE_FILE``) and a bad ``OTEL_*`` value (a ratio of 1.5, an unknown
    sampler or exporter, an OTLP protocol no Python exporter speaks): ``dial()`` raises
    the ConfigError naming the variable and quoting the value, as ``MeshServer.start()``
    does for the same environment. It used to accept it: the channel set tracing up at its
    first call, logged the error as a warning and ran on without tracing for the life of
    the process (construction only checked that the SDK was installed)."""
    assert not isinstance(trace.get_tracer_provider(), TracerProvider), \
        "a global SDK provider is installed: the environment would not be read"
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(tmp_path / "spans.jsonl"))
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER",
              "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_PROTOCOL",
              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=1.0,
                                          poll_interval_s=0.05))
    try:
        # the reference: a serving process refuses this environment at start()
        srv = meshkit.MeshServer("orderd", [], registry=registry,
                                 options=meshkit.ServeOptions(insecure=True))
        with pytest.raises(ConfigError, match=variable) as served:
            await srv.start()
        assert quoted in str(served.value)
        await srv.drain()
        channel = None
        try:
            with pytest.raises(ConfigError, match=variable) as dialed:
                channel = meshkit.dial("echo", registry=registry,
                                       options=meshkit.DialOptions(insecure=True))
            assert quoted in str(dialed.value)
        finally:
            if channel is not None:
                await channel.close()
        # a process whose tracing is already set up does not read the environment again
        installed = TracerProvider()
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: installed)
        async with meshkit.dial("echo", registry=registry,
                                options=meshkit.DialOptions(insecure=True)):
            pass
        monkeypatch.undo()
        installed.shutdown()
    finally:
        await registry.close()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_otlp_endpoint_without_the_exporter_package_warns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` set (the deploy manifests' way to ask for OTLP),
    ``OTEL_TRACES_EXPORTER`` unset, and the image has the SDK but not
    ``opentelemetry-exporter-otlp``: tracing is asked for, so configure_tracing logs a
    warning naming the package, as for ``OTEL_TRACES_EXPORTER=otlp`` without it. It used
    to install the SDK (every sampled call paying for a span) and export nothing,
    saying nothing."""
    try:
        import opentelemetry.exporter.otlp  # noqa: F401
        pytest.skip("opentelemetry-exporter-otlp is installed")
    except ImportError:
        pass
    for k in ("OTEL_TRACES_EXPORTER", "MESHKIT_TRACE_FILE", "OTEL_TRACES_SAMPLER",
              "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL",
              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.setenv(variable, "http://127.0.0.1:4317")
        assert tracing_wanted()
        with structlog.testing.capture_logs() as logs:
            provider = configure_tracing("orderd", set_global=False)
        provider.shutdown()
        assert _exporters(provider) == []
        warned = [ev for ev in logs if ev["log_level"] == "warning"
                  and "opentelemetry-exporter-otlp" in ev["event"]]
        assert len(warned) == 1, logs
        assert warned[0]["asked_by"] == variable, warned
        monkeypatch.delenv(variable)
    # nothing asks for OTLP (a trace file only): nothing to warn about
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    with structlog.testing.capture_logs() as logs:
        configure_tracing("orderd", set_global=False).shutdown()
    assert not [ev for ev in logs if ev["log_level"] == "warning"], logs


_FAKE_OTLP = '''
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class _Fake(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


class GrpcSpanExporter(_Fake):
    """Stands in for opentelemetry.exporter.otlp.proto.grpc.trace_exporter."""


class HttpSpanExporter(_Fake):
    """Stands in for opentelemetry.exporter.otlp.proto.http.trace_exporter."""
'''

# The entry points opentelemetry-exporter-otlp (the meta package: ``otlp`` is the gRPC
# exporter), -otlp-proto-grpc and -otlp-proto-http register (their pyproject.toml).
_FAKE_ENTRY_POINTS = """\
[opentelemetry_traces_exporter]
otlp = fake_otlp_exporters:GrpcSpanExporter
otlp_proto_grpc = fake_otlp_exporters:GrpcSpanExporter
otlp_proto_http = fake_otlp_exporters:HttpSpanExporter
"""

# (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
# -> the exporter chosen (None: the variable unset)
_PROTOCOL_CASES = [
    (None, "http/protobuf", None, "HttpSpanExporter"),
    ("otlp", "http/protobuf", None, "HttpSpanExporter"),
    ("otlp", " HTTP/protobuf ", None, "HttpSpanExporter"),
    (None, "grpc", "http/protobuf", "HttpSpanExporter"),  # the traces variable first
    (None, "http/protobuf", "grpc", "GrpcSpanExporter"),
    ("otlp", "http/protobuf", "", "HttpSpanExporter"),  # empty is unset
    (None, None, None, "GrpcSpanExporter"),  # the Python SDK's default: gRPC
    ("otlp", "grpc", None, "GrpcSpanExporter"),
    ("otlp_proto_grpc", "http/protobuf", None, "GrpcSpanExporter"),  # named: it wins
]

_PROTOCOL_CHILD = """
    import json, os
    from meshkit.observability import configure_tracing
    out = []
    for exporter, protocol, traces_protocol, _ in json.loads(os.environ["CASES"]):
        for name, value in (("OTEL_TRACES_EXPORTER", exporter),
                            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", traces_protocol)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        p = configure_tracing("orderd", set_global=False)
        out.append([type(sp.span_exporter).__name__
                    for sp in p._active_span_processor._span_processors])
        p.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.timeout(60)
def test_otlp_protocol_variables_choose_the_otlp_exporter(tmp_path: Path) -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` (what the OpenTelemetry Operator
    injects into Python pods, and the spec's recommended default) with
    ``OTEL_TRACES_EXPORTER`` unset or ``otlp`` picks the OTLP/HTTP exporter
    (``otlp_proto_http``), ``grpc`` the gRPC one, ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
    first: the OpenTelemetry SDK's configurator's mapping. An explicitly named exporter
    wins over the protocol. meshkit used to load the ``otlp`` entry point (the gRPC
    exporter) whatever the protocol said: gRPC sent to the collector's HTTP port, every
    export failing. ``opentelemetry-exporter-otlp`` is simulated by a distribution
    registering the same three entry points."""
    site = tmp_path / "site"
    dist = site / "fake_otlp_exporters-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / "fake_otlp_exporters.py").write_text(_FAKE_OTLP)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-otlp-exporters\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(_FAKE_ENTRY_POINTS)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_PROTOCOL_CHILD))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHKIT_"))}
    env.update({"PYTHONPATH": os.pathsep.join((str(site), str(_ROOT))),
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "CASES": json.dumps(_PROTOCOL_CASES)})
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=str(_ROOT),
                          capture_output=True, text=True, timeout=50, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    chosen = json.loads(lines[-1][len("RESULT "):])
    expected = [[case[3]] for case in _PROTOCOL_CASES]
    assert list(zip(_PROTOCOL_CASES, chosen, strict=True)) == list(
        zip(_PROTOCOL_CASES, expected, strict=True))


@pytest.mark.parametrize(("env", "variable"), [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
])
def test_configure_tracing_refuses_an_otlp_protocol_no_exporter_speaks(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str) -> None:
    """An OTLP protocol other than ``grpc`` or ``http/protobuf`` (the two the Python
    exporters speak) is a ConfigError naming the variable, as the SDK's configurator
    refuses it, when OTLP is asked for (``OTEL_TRACES_EXPORTER`` unset or ``otlp``); not
    when another exporter is named."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.delenv("MESHKIT_TRACE_FILE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for exporter in ("", "otlp", "console, otlp"):
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
        with pytest.raises(ConfigError, match=variable) as info:
            configure_tracing("orderd", set_global=False)
        assert repr(env[variable]) in str(info.value)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    configure_tracing("orderd", set_global=False).shutdown()


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


def test_telemetry_interceptors_beside_the_telemetry_option_are_refused() -> None:
    """``server_interceptors()``/``client_interceptors()`` were documented as "the
    observability part of ``ServeOptions.interceptors`` / ``DialOptions.interceptors``",
    but ``ServeOptions.telemetry`` and ``DialOptions.telemetry`` default to
    ``TelemetryOptions()`` and install their own: so set up, every call was counted,
    traced and logged twice on each side. And ``TelemetryOptions.attempt_spans`` said to
    install ``attempt_interceptors()`` as ``DialOptions.attempt_interceptors``, which
    ``dial()`` already adds from ``telemetry``: two CLIENT spans per attempt. Now each is
    a ``ConfigError`` that quotes the interceptor and says ``telemetry=None``; with
    ``telemetry=None`` the sets are taken."""
    opts = TelemetryOptions(attempt_spans=True)
    for serve_set in (server_interceptors("orderd"),
                      server_interceptors("orderd", implementation="otel")):
        with pytest.raises(ConfigError, match="telemetry=None") as info:
            meshkit.ServeOptions(interceptors=serve_set)
        assert "TelemetryServerInterceptor" in str(info.value)
        assert meshkit.ServeOptions(interceptors=serve_set, telemetry=None).interceptors \
            == serve_set
    with pytest.raises(ConfigError, match="telemetry=None") as info:
        meshkit.DialOptions(interceptors=client_interceptors(opts))
    assert "TelemetryClientInterceptor" in str(info.value)
    with pytest.raises(ConfigError, match="telemetry=None") as info:
        meshkit.DialOptions(telemetry=opts, attempt_interceptors=attempt_interceptors(opts))
    assert "AttemptSpanInterceptor" in str(info.value)
    assert "attempt_spans=True" in str(info.value)
    dial = meshkit.DialOptions(telemetry=None, interceptors=client_interceptors(opts),
                               attempt_interceptors=attempt_interceptors(opts))
    assert len(dial.interceptors) == len(dial.attempt_interceptors) == 1


async def test_the_documented_interceptor_sets_count_each_call_once(
        registry: LocalRegistry) -> None:
    """The interceptor sets installed as documented (``telemetry=None`` on both sides)
    count a call once in ``/metrics`` on each side."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.echo import add_echo, method

    prom = CollectorRegistry()
    opts = TelemetryOptions(registry=prom, tracing=False, access_log=False)

    def counts() -> tuple[float, float]:
        got = {s.name: s.value
               for fam in text_string_to_metric_families(generate_latest(prom).decode())
               for s in fam.samples if s.labels.get("grpc_method") == "ClientStream"}
        return (got.get("grpc_server_started_total", 0.0),
                got.get("grpc_client_started_total", 0.0))

    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                 telemetry=None,
                                 interceptors=server_interceptors("echo", opts)))
    await srv.start()
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=None, interceptors=client_interceptors(opts)))
    try:
        await ch.wait_for_endpoints(1)
        call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = ch.stream_unary(
            method("ClientStream"))
        assert await call(iter([b"a"]), timeout=5) == b"e1|a"
    finally:
        await ch.close()
        await srv.drain()
    assert counts() == (1, 1)


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


def test_an_otlp_protocol_for_another_sdk_is_no_error_where_no_otlp_exporter_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process traced to a file (``MESHKIT_TRACE_FILE``; ``OTEL_TRACES_EXPORTER`` unset,
    no OTLP endpoint, the OTLP exporter not installed) in a pod whose environment sets
    ``OTEL_EXPORTER_OTLP_PROTOCOL=http/json`` (a spec value, the JavaScript SDK's
    default, set for every pod of a polyglot deployment): ``dial()`` (tracing_wanted)
    refused it, "must be grpc or http/protobuf", though no OTLP exporter would run. The
    protocol is checked only when one will: ``otlp`` named, or an OTLP endpoint set."""
    from meshkit.errors import ConfigError

    try:
        import opentelemetry.exporter.otlp  # noqa: F401
        pytest.skip("opentelemetry-exporter-otlp is installed: OTLP would be chosen")
    except ImportError:
        pass
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MESHKIT_TRACE_FILE", "/dev/null")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert tracing_wanted()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing_wanted()  # an OTLP exporter would run: its protocol must be one it speaks
