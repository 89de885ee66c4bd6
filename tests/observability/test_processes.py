"""Whole processes: quiet until configured, the OpenTelemetry SDK optional, and a process
that only dials honouring ``OTEL_*`` (its service name included, also when it calls before
it serves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).parents[2]

# Serve and dial (telemetry on by default, debug-level lines on the call path), no
# configure_logging(): nothing may reach stdout. A failing call makes the server side log
# at warning level too.
_UNCONFIGURED = """
import asyncio, sys
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method

async def main() -> None:
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=30.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=1.0))
    await srv.start()
    async with meshkit.dial("echo", registry=reg,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        for _ in range(3):
            assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
        try:
            await ch.unary_unary(method("Fail"))(b"INTERNAL", timeout=5)
        except grpc.aio.AioRpcError as e:
            assert e.code() is grpc.StatusCode.INTERNAL
    await srv.drain()
    await reg.close()

asyncio.run(main())
"""


def _run(script: str, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("OTEL_", "MESHKIT_"))}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=_ROOT, env=full_env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_unconfigured_process_writes_nothing_to_stdout(tmp_path: Path) -> None:
    """Without configure_logging() a process that serves and dials (calls that succeed and
    one that fails) writes nothing on stdout, and no access line anywhere; meshkit's
    warnings (plaintext serving) reach stderr through the standard logging bridge."""
    proc = _run(_UNCONFIGURED, str(tmp_path / "r"))
    assert proc.stdout == ""
    assert '"rpc"' not in proc.stderr and " rpc " not in proc.stderr
    assert "serving plaintext" in proc.stderr


# One part of meshkit alone, never dial() or serve(): the local registry finds its file
# deleted (a warning), and a JWKS publisher starts (an info line). sys.argv[1]: a directory.
_PART_ALONE = """
import asyncio, os, sys, time
from meshkit.auth import JWKSServer, KeySet
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

async def main() -> None:
    reg = LocalRegistry(LocalOptions(path=os.path.join(sys.argv[1], "reg"), ttl_s=1.0))
    await reg.register(Instance(service="orderd", instance_id="orderd-1",
                                host="127.0.0.1", port=50051))
    os.remove(os.path.join(sys.argv[1], "reg", "registry.db"))
    deadline = time.monotonic() + 20  # a heartbeat (every 1/3 s) finds the file gone:
    while reg.status().reopened == 0:  # counted, then logged; close() waits for it
        assert time.monotonic() < deadline, "the deleted file was never reopened"
        await asyncio.sleep(0.02)
    await reg.close()
    server = JWKSServer(KeySet.generate())
    await server.start("127.0.0.1", 0)
    await server.stop()

asyncio.run(main())
assert "meshkit.channel" not in sys.modules and "meshkit.server" not in sys.modules
"""


def test_a_part_of_meshkit_alone_writes_nothing_to_stdout(tmp_path: Path) -> None:
    """A program using ``meshkit.discovery`` or ``meshkit.auth`` alone (a registration
    script, a JWKS publisher) is quiet until configured too: the local registry's warning
    about its deleted file and the JWKS server's info line went to stdout (structlog's own
    default) once ``import meshkit`` stopped loading ``meshkit.observability``, which
    installed the quiet default; each logging package now installs it."""
    proc = _run(_PART_ALONE, str(tmp_path))
    assert proc.stdout == "", proc.stdout
    assert "deleted or replaced" in proc.stderr  # the warning still reaches stderr
    assert "jwks serving" not in proc.stderr  # info: dropped, as the stdlib would

def test_unconfigured_access_log_follows_stdlib_logging(tmp_path: Path) -> None:
    """An application that routes the standard library's ``meshkit.access`` at INFO gets
    the access lines there (JSON, on its handler), still nothing on stdout."""
    script = ("import logging, sys; logging.basicConfig(stream=sys.stderr, level='INFO', "
              "format='%(name)s %(message)s')\n" + _UNCONFIGURED)
    proc = _run(script, str(tmp_path / "r"))
    assert proc.stdout == ""
    lines = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stderr.splitlines()
             if ln.startswith("meshkit.access ")]
    assert sorted(ln["side"] for ln in lines) == ["client"] * 4 + ["server"] * 4
    assert {ln["code"] for ln in lines} == {"OK", "INTERNAL"}


# A meta-path finder that refuses the OpenTelemetry SDK and the grpc instrumentation, as
# if only ``opentelemetry-api`` were installed.
_HIDE_SDK = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Hide())
"""

_NO_SDK = _HIDE_SDK + """
import os
from meshkit.errors import ConfigError
import meshkit.observability as obs
from meshkit.observability import *  # noqa: F403  (works without the SDK)
from meshkit.observability import configure_tracing, server_interceptors
from meshkit.observability import tracing_from_env

def refused(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"{fn} did not raise")

for msg in (refused(configure_tracing, "svc"),
            refused(lambda: obs.render_trace),
            refused(server_interceptors, "svc", implementation="otel")):
    assert "meshkit[otel" in msg, msg
assert "render_trace" not in obs.__all__
assert tracing_from_env("svc") is None  # the environment asks for nothing
os.environ["OTEL_TRACES_EXPORTER"] = "console"
assert "meshkit[otel]" in refused(tracing_from_env, "svc")
del os.environ["OTEL_TRACES_EXPORTER"]
""" + _UNCONFIGURED + """
assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
print("OK")
"""


def test_serve_and_dial_work_without_the_otel_sdk(tmp_path: Path) -> None:
    """With only opentelemetry-api importable, meshkit imports, serves and dials with
    tracing on; what needs the SDK raises ConfigError naming the ``meshkit[otel]`` extra
    (configure_tracing, render_trace, tracing asked for by OTEL_*; implementation="otel"
    names ``meshkit[otel-grpc]``)."""
    proc = _run(_NO_SDK, str(tmp_path / "r"))
    assert proc.stdout.strip() == "OK"


_DIAL_ONLY = """
import asyncio, sys
import grpc
import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.echo import handler, method

async def main() -> None:
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=30.0, poll_interval_s=0.05))
    # a plain grpc.aio server (MeshServer.start would set tracing up from OTEL_* itself)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await reg.register(Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
    async with meshkit.dial("echo", registry=reg,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        await ch.unary_unary(method("Unary"))(b"hi", timeout=5)
    await server.stop(None)
    await reg.close()
    from opentelemetry import trace
    trace.get_tracer_provider().shutdown()

asyncio.run(main())
"""


def test_a_process_that_only_dials_honours_otel_env(tmp_path: Path) -> None:
    """MESHKIT_TRACE_FILE sets up tracing in a process whose only telemetry is a dialing
    channel (serve() never ran there): its CLIENT span lands in the file."""
    trace_file = tmp_path / "spans.jsonl"
    _run(_DIAL_ONLY, str(tmp_path / "r"), env={"MESHKIT_TRACE_FILE": str(trace_file),
                                               "OTEL_TRACES_EXPORTER": "none",
                                               "OTEL_SERVICE_NAME": "dialer"})
    spans = [json.loads(ln) for ln in trace_file.read_text().splitlines() if ln.strip()]
    assert [s["name"] for s in spans] == ["meshkit.test.Echo/Unary"], spans
    assert spans[0]["attributes"]["server.address"] == "echo"


_SDK_DISABLED = _UNCONFIGURED + """
import os
from opentelemetry import trace
print(type(trace.get_tracer_provider()).__name__,
      os.path.exists(os.environ["MESHKIT_TRACE_FILE"]))
"""


@pytest.mark.parametrize("sdk", [True, False], ids=["sdk", "api_only"])
def test_otel_sdk_disabled_turns_the_env_tracing_set_up_off(tmp_path: Path, sdk: bool) -> None:
    """``OTEL_SDK_DISABLED=true`` is OpenTelemetry's switch for "a no-op SDK for all
    telemetry signals" (General SDK Configuration; case-insensitive), e.g. for a service
    the OpenTelemetry Operator injects ``OTEL_EXPORTER_OTLP_ENDPOINT`` into that should
    not trace.

    What was wrong: meshkit's environment set-up never read it, so an OTLP endpoint (or
    ``MESHKIT_TRACE_FILE``) still asked for tracing: a service installed without
    ``meshkit[otel]`` could neither serve nor dial (``ConfigError: ... needs the
    OpenTelemetry SDK``), and with the SDK meshkit installed a provider, its exporters
    and their batch thread anyway.

    Now: with it set the environment asks for no tracing: nothing is set up (the global
    provider stays the API's, no span file), no SDK is needed, and calls propagate trace
    context as without an SDK."""
    env = {"OTEL_SDK_DISABLED": "TRUE" if sdk else "true",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
           "MESHKIT_TRACE_FILE": str(tmp_path / "spans.jsonl")}
    proc = _run(("" if sdk else _HIDE_SDK) + _SDK_DISABLED, str(tmp_path / "r"), env=env)
    assert proc.stdout.split() == ["ProxyTracerProvider", "False"], proc.stdout


# A process that calls a dependency (a plain grpc.aio server: nothing but the channel can
# set tracing up) and, with argv[2] == "serve-after", then serves "orderd" and calls the
# dependency again on the same channel and its own service on another. Prints the global
# provider's service.name after the first call ("first") and, when serving, the
# service.name of every span ended after serve() (the client span to the dependency and
# the client and server spans to orderd), and the process's resource attributes.
_SERVICE_NAME = """
import asyncio, json, os, sys, time
import grpc
import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from opentelemetry import trace
from tests.support.echo import add_echo, handler, method

async def main() -> dict:
    out = {}
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=30.0, poll_interval_s=0.05))
    dep = grpc.aio.server()
    dep.add_generic_rpc_handlers((handler("dep-1"),))
    port = dep.add_insecure_port("127.0.0.1:0")
    await dep.start()
    await reg.register(Instance(service="dep", instance_id="dep-1", host="127.0.0.1",
                                port=port))
    opts = meshkit.DialOptions(insecure=True)
    async with meshkit.dial("dep", registry=reg, options=opts) as ch:
        await ch.unary_unary(method("Unary"))(b"warm-up", timeout=10)
        provider = trace.get_tracer_provider()
        out["provider"] = type(provider).__name__
        out["first"] = provider.resource.attributes.get("service.name")
        if sys.argv[2] == "serve-after":
            deadline = time.monotonic() + 20  # the warm-up's span written (ended)
            path = os.environ["MESHKIT_TRACE_FILE"]
            while not (os.path.exists(path) and open(path).read().strip()):
                assert time.monotonic() < deadline, "the warm-up span never ended"
                await asyncio.sleep(0.01)
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
            memory = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(memory))
            srv = meshkit.MeshServer("orderd", [add_echo("o1")], registry=reg,
                                     options=meshkit.ServeOptions(
                                         insecure=True, drain_delay_s=0, grace_s=1.0))
            await srv.start()
            await ch.unary_unary(method("Unary"))(b"again", timeout=10)
            async with meshkit.dial("orderd", registry=reg, options=opts) as own:
                await own.unary_unary(method("Unary"))(b"own", timeout=10)
            deadline = time.monotonic() + 20
            while len(memory.get_finished_spans()) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            out["spans"] = sorted((s.kind.name, s.resource.attributes.get("service.name"))
                                  for s in memory.get_finished_spans())
            await srv.drain()
        out["resource"] = dict(provider.resource.attributes)
    await dep.stop(None)
    await reg.close()
    provider.shutdown()
    return out

print("RESULT " + json.dumps(asyncio.run(main())), flush=True)
"""


def _service_name_run(tmp_path: Path, mode: str, env: dict[str, str]) -> dict[str, Any]:
    env = {"MESHKIT_TRACE_FILE": str(tmp_path / "spans.jsonl"),
           "OTEL_TRACES_EXPORTER": "none", **env}
    proc = _run(_SERVICE_NAME, str(tmp_path / "r"), mode, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    assert out["provider"] == "TracerProvider", out
    assert (tmp_path / "spans.jsonl").read_text().strip(), "no span written: tracing off"
    return out


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("env", "name"), [
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=checkout,deployment.environment=prod"},
     "checkout"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=checkout,deployment.environment=prod",
      "OTEL_SERVICE_NAME": "gateway"}, "gateway"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}, "unknown_service"),
], ids=["resource-attributes", "service-name-first", "neither"])
def test_a_process_that_only_dials_takes_its_service_name_from_otel_env(
        tmp_path: Path, env: dict[str, str], name: str) -> None:
    """A process that only dials, deployed with ``OTEL_RESOURCE_ATTRIBUTES=
    service.name=checkout,deployment.environment=prod`` (the usual way, e.g. what the
    OpenTelemetry Operator injects): its spans say ``service.name=checkout``, with
    ``OTEL_SERVICE_NAME`` first and ``unknown_service`` (the SDK's
    ``unknown_service:<executable>``) only when neither names it, as the OpenTelemetry
    resource SDK specifies. The channel used to set tracing up with the explicit
    placeholder ``unknown_service``, which won over the environment's
    ``service.name`` while keeping its other attributes."""
    out = _service_name_run(tmp_path, "dial", env)
    assert out["first"] == name or (name == "unknown_service" and str(
        out["first"]).startswith("unknown_service:")), out
    assert out["resource"]["deployment.environment"] == "prod", out


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("env", "name"), [
    ({}, "orderd"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=checkout,deployment.environment=prod"},
     "orderd"),
    ({"OTEL_SERVICE_NAME": "from-env"}, "from-env"),
], ids=["no-name", "resource-attributes", "service-name"])
def test_a_call_before_serve_does_not_change_the_service_name(
        tmp_path: Path, env: dict[str, str], name: str) -> None:
    """A service that calls a dependency at start-up (a warm-up, reading its
    configuration) before ``serve("orderd")``, tracing asked for by the environment:
    every span after serve() (its server spans, and the client spans of a channel made
    before, on tracers made before) says ``service.name=orderd``, what it says when
    serve() comes first (``OTEL_SERVICE_NAME`` still first, and serve's name over
    ``OTEL_RESOURCE_ATTRIBUTES``' as then). The first call used to install the global
    provider as ``unknown_service`` and serve() found a provider installed and left it:
    the order of two start-up steps named every span of the process."""
    out = _service_name_run(tmp_path, "serve-after", env)
    assert out["resource"]["service.name"] == name, out
    assert {n for _, n in out["spans"]} == {name}, out
    assert [k for k, _ in out["spans"]].count("CLIENT") >= 2, out
    assert ["SERVER", name] in out["spans"], out
    if "OTEL_RESOURCE_ATTRIBUTES" in env:
        assert out["resource"]["deployment.environment"] == "prod", out


def test_the_quiet_default_leaves_structlog_unconfigured_for_the_application() -> None:
    """Importing meshkit keeps ``structlog.is_configured()`` false, so an application's
    ``configure_once`` still applies (no warning), and its own loggers print as
    structlog's default does while meshkit's stay off stdout. (``import meshkit`` alone
    loads none of meshkit's modules, structlog neither; each package that logs installs
    the quiet default, here ``meshkit.discovery``.)"""
    script = """
import sys, warnings, structlog
warnings.simplefilter("error")
import meshkit
assert "meshkit._log" not in sys.modules
import meshkit.discovery
assert not structlog.is_configured()
structlog.get_logger("app").info("app line")
structlog.get_logger("meshkit.channel").warning("meshkit line")
structlog.configure_once(processors=[structlog.processors.KeyValueRenderer()])
structlog.get_logger("app").info("after")
"""
    proc = _run(script)
    assert "app line" in proc.stdout and "after" in proc.stdout
    assert "meshkit line" not in proc.stdout and "meshkit line" in proc.stderr


def test_access_log_and_meshkit_lines_follow_the_applications_structlog_configure(
        tmp_path: Path) -> None:
    """An application that calls ``structlog.configure(processors=[...])`` itself (the
    usual call: no logger factory) gets meshkit's lines, one ``rpc`` access line per
    side included, rendered by its chain where its own lines go (structlog's default:
    stdout)."""
    script = """
import structlog
import meshkit
structlog.configure(processors=[structlog.processors.add_log_level,
                                structlog.processors.JSONRenderer()])
""" + _UNCONFIGURED + """
structlog.get_logger("app").info("app done")
"""
    proc = _run(script, str(tmp_path / "r"))
    lines = []
    for ln in proc.stdout.splitlines():
        try:
            lines.append(json.loads(ln))
        except ValueError:
            continue
    assert {"event": "app done", "level": "info"} in lines, proc.stdout
    rpc = [ln for ln in lines if ln.get("event") == "rpc"]
    assert sorted(ln["side"] for ln in rpc) == ["client"] * 4 + ["server"] * 4, proc.stdout
    assert any(ln.get("event") == "serving plaintext (no TLS)" for ln in lines), proc.stdout


# Serve "echo" and dial it once, both with TELEMETRY (None: telemetry off), then print
# the global provider's class and whether the application may still install its own.
_OWN_PROVIDER = """
import asyncio, sys
import meshkit
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.echo import add_echo, method

app_provider = TracerProvider()
telemetry = TELEMETRY

async def main() -> None:
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=30.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=1.0, telemetry=telemetry))
    await srv.start()
    try:
        async with meshkit.dial("echo", registry=reg, options=meshkit.DialOptions(
                insecure=True, telemetry=telemetry)) as ch:
            assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
    finally:
        await srv.drain()
        await reg.close()

asyncio.run(main())
print("GLOBAL", type(trace.get_tracer_provider()).__name__)
trace.set_tracer_provider(app_provider)  # the application installs its own, later
print("APP_PROVIDER_INSTALLED", trace.get_tracer_provider() is app_provider)
"""


@pytest.mark.parametrize("telemetry", ["TelemetryOptions(tracer_provider=app_provider)",
                                       "None"], ids=["own-provider", "telemetry-off"])
@pytest.mark.parametrize("env", [
    {"MESHKIT_TRACE_FILE": "spans.jsonl"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_SAMPLER": "bogus"},
], ids=["trace-file", "bad-otel-value"])
def test_serve_leaves_the_global_provider_alone_when_its_telemetry_does_not_use_it(
        tmp_path: Path, telemetry: str, env: dict[str, str]) -> None:
    """An application that hands meshkit its own provider
    (``TelemetryOptions(tracer_provider=app_provider)``) or turns meshkit's telemetry off
    (``ServeOptions(telemetry=None)``, e.g. to install its own interceptors) runs with the
    ``OTEL_*`` / ``MESHKIT_TRACE_FILE`` variables its own exporters read. ``serve()`` used
    to build an SDK provider from them and install it as the *global* one all the same, so
    the application's own ``trace.set_tracer_provider()`` afterwards was refused, every
    other library's spans went to exporters it never asked for, and a value meshkit's
    set-up refuses failed ``start()`` although meshkit used no such provider. Now, as
    ``dial()`` already did, ``serve()`` sets tracing up from the environment only for a
    telemetry interceptor that traces to the global provider: the global provider is left
    alone, and the application installs its own."""
    env = {k: str(tmp_path / v) if k == "MESHKIT_TRACE_FILE" else v for k, v in env.items()}
    proc = _run(_OWN_PROVIDER.replace("TELEMETRY", telemetry), str(tmp_path / "r"), env=env)
    out = proc.stdout.splitlines()
    assert "GLOBAL ProxyTracerProvider" in out and "APP_PROVIDER_INSTALLED True" in out, (
        out, proc.stderr[-600:])
    assert not (tmp_path / "spans.jsonl").exists()


def test_serve_with_default_telemetry_sets_the_global_provider_up_from_the_env(
        tmp_path: Path) -> None:
    """The default telemetry traces to the global provider: ``serve()`` sets it up from
    ``MESHKIT_TRACE_FILE`` (its spans land in the file)."""
    trace_file = tmp_path / "spans.jsonl"
    proc = _run(_OWN_PROVIDER.replace("TELEMETRY", "TelemetryOptions()"), str(tmp_path / "r"),
                env={"MESHKIT_TRACE_FILE": str(trace_file)})
    assert "GLOBAL TracerProvider" in proc.stdout.splitlines(), proc.stdout
    spans = [json.loads(ln) for ln in trace_file.read_text().splitlines() if ln.strip()]
    assert {s["kind"] for s in spans} >= {"SpanKind.SERVER", "SpanKind.CLIENT"} or len(
        spans) >= 2, spans
