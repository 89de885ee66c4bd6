"""Calls of methods the server does not serve are recorded (gRFC A66).

grpc.aio answers a call whose method no handler serves ``UNIMPLEMENTED`` "Method not
found!" without running any handler, so meshkit's telemetry, a reporter on the handler's
wrap, never saw it: no ``grpc_server_started_total`` / ``grpc_server_handled_total`` /
histogram sample, no access line, no span. An operator could not see a client calling a
method that does not exist (a stale proto after a deploy, a scanner). gRFC A66 records such
calls with ``grpc.method="other"`` and grpc-go's stats handlers see them.

Now they are answered exactly as before (the same code and details, echoing nothing) and
recorded: metrics labelled ``grpc_service="other", grpc_method="other"``,
``grpc_type="unknown"`` (the server never learns a method's kind from a call it cannot
route: a unary call and a bidi stream look the same there), ``grpc_code="Unimplemented"``;
one access line with the method name as the caller sent it; a span named ``_OTHER``
(OpenTelemetry RPC semconv: ``rpc.method`` ``_OTHER`` for a method the server does not
recognise, the name sent in ``rpc.method_original``). The other server checks do not run
for them, as before (grpc-go answers an unknown method before its interceptors):
an unauthenticated, rate-limited or draining caller of an unknown method gets
``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._handlers import handler_resolver
from meshkit._limits import guard_generic_handler
from meshkit._metadata import MESH_USER_AGENT
from meshkit.auth import AuthOptions
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, add_trace_context, redact_secrets
from meshkit.observability._server import TelemetryServerInterceptor
from meshkit.resilience import RateLimitOptions
from tests.observability.conftest import Tracing
from tests.support.echo import SERVICE, add_echo, handler, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_NOT_FOUND = "Method not found!"
_UNKNOWN_SERVICE = "/no.such.v9.Service/Anything"
_SHAPES = ("unary", "server_stream", "client_stream", "bidi")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """structlog set up like configure_logging (trace ids, redaction, JSON) into a buffer."""
    buf = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, add_trace_context, redact_secrets,
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(buf),
        cache_logger_on_first_use=False,
    )
    yield buf
    structlog.reset_defaults()


class _PassThrough(grpc.aio.ServerInterceptor):
    """A user's interceptor that only passes calls on: grpc.aio then runs the server's
    whole chain per call (meshkit cannot resolve it once per method)."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


class _NoTokens:
    """A verifier no token passes (a caller without one never reaches it)."""

    async def verify(self, token: str) -> Any:
        raise ValueError("no token is good")


async def _call(ch: grpc.aio.Channel, name: str, shape: str) -> grpc.aio.AioRpcError:
    """Call ``name`` in ``shape``; returns the error it ended with."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(10):
            if shape == "unary":
                await ch.unary_unary(name)(b"x", timeout=5)
            elif shape == "server_stream":
                async for _ in ch.unary_stream(name)(b"x", timeout=5):
                    pass
            elif shape == "client_stream":
                # no request message: one written after the answer can end the call
                # INTERNAL on grpc.aio's client, plain grpc.aio servers' answers too
                await ch.stream_unary(name)(iter([]), timeout=5)
            else:
                async for _ in ch.stream_stream(name)(iter([]), timeout=5):
                    pass
    return err.value


def _samples(prom: CollectorRegistry, family: str) -> dict[tuple[str, ...], float]:
    """``family``'s samples by (grpc_type, grpc_service, grpc_method[, grpc_code])."""
    out: dict[tuple[str, ...], float] = {}
    for fam in prom.collect():
        for s in fam.samples:
            if s.name == family:
                key = (s.labels["grpc_type"], s.labels["grpc_service"],
                       s.labels["grpc_method"])
                if "grpc_code" in s.labels:
                    key += (s.labels["grpc_code"],)
                out[key] = s.value
    return out


def _other(prom: CollectorRegistry) -> tuple[float | None, float | None, float | None]:
    """(started, handled Unimplemented, histogram count) of the unknown methods' record."""
    labels = {"grpc_type": "unknown", "grpc_service": "other", "grpc_method": "other"}
    return (prom.get_sample_value("grpc_server_started_total", labels),
            prom.get_sample_value("grpc_server_handled_total",
                                  {**labels, "grpc_code": "Unimplemented"}),
            prom.get_sample_value("grpc_server_handling_seconds_count", labels))


def _access(buf: io.StringIO) -> list[dict[str, Any]]:
    return [ln for ln in map(json.loads, buf.getvalue().splitlines())
            if ln.get("event") == "rpc" and ln.get("side") == "server"]


@contextlib.asynccontextmanager
async def _mesh(registry: LocalRegistry, **options: Any) -> AsyncIterator[
        tuple[meshkit.MeshServer, grpc.aio.Channel]]:
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          **options))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            yield srv, ch
    finally:
        await srv.drain()


async def test_a_plain_grpc_aio_server_answers_unimplemented_method_not_found() -> None:
    """What the answer must stay: grpc.aio's own, for every shape."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler("p1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for shape in _SHAPES:
                err = await _call(ch, method("Nope"), shape)
                assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                                       _NOT_FOUND), shape
    finally:
        await server.stop(None)


async def test_mesh_server_records_unknown_methods(
        registry: LocalRegistry, tracing: Tracing, json_lines: io.StringIO) -> None:
    """The default MeshServer (its chain applied where handlers are looked up)."""
    prom = CollectorRegistry()
    telemetry = TelemetryOptions(tracer_provider=tracing.provider, registry=prom)
    async with _mesh(registry, telemetry=telemetry) as (_srv, ch):
        await _records_unknown_methods(ch, prom, tracing, json_lines)


async def test_mesh_server_with_a_per_call_chain_records_unknown_methods(
        registry: LocalRegistry, tracing: Tracing, json_lines: io.StringIO) -> None:
    """A MeshServer with a user's interceptor: grpc.aio runs the chain per call."""
    prom = CollectorRegistry()
    telemetry = TelemetryOptions(tracer_provider=tracing.provider, registry=prom)
    async with _mesh(registry, telemetry=telemetry,
                     interceptors=(_PassThrough(),)) as (_srv, ch):
        await _records_unknown_methods(ch, prom, tracing, json_lines)


async def test_the_chain_resolved_at_lookup_records_unknown_methods(
        tracing: Tracing, json_lines: io.StringIO) -> None:
    """The lookup path as MeshServer builds it (the chain as one resolver, guarded
    generic handlers) with :func:`unknown_methods_handler` as the last generic handler,
    on a grpc.aio server (until MeshServer adds it itself)."""
    from meshkit._handlers import unknown_methods_handler

    prom = CollectorRegistry()
    telemetry = TelemetryOptions(tracer_provider=tracing.provider, registry=prom)
    chain = meshkit.server_chain("echo", meshkit.ServeOptions(insecure=True,
                                                              telemetry=telemetry))
    resolve = handler_resolver(chain)
    assert resolve is not None
    unknown = unknown_methods_handler(chain)
    assert unknown is not None
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((guard_generic_handler(handler("e1"), resolve),
                                     unknown))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await _records_unknown_methods(ch, prom, tracing, json_lines)
    finally:
        await server.stop(None)


async def _records_unknown_methods(ch: grpc.aio.Channel, prom: CollectorRegistry,
                                   tracing: Tracing, json_lines: io.StringIO) -> None:
    # a known method first: its record is untouched by what follows
    assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
    names = [method("Nope"), _UNKNOWN_SERVICE]
    sent = [(name, shape) for name in names for shape in _SHAPES]
    for name, shape in sent:
        err = await _call(ch, name, shape)
        assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                               _NOT_FOUND), (name, shape)
    n = float(len(sent))
    await until(lambda: _other(prom) == (n, n, n), what=f"{n} unknown calls counted")
    handled = _samples(prom, "grpc_server_handled_total")
    assert handled == {("unary", SERVICE, "Unary", "OK"): 1.0,
                       ("unknown", "other", "other", "Unimplemented"): n}
    # one access line per call, the method as sent
    await until(lambda: len(_access(json_lines)) == len(sent) + 1, what="access lines")
    lines = [ln for ln in _access(json_lines) if ln["code"] == "UNIMPLEMENTED"]
    assert sorted(ln["method"] for ln in lines) == sorted(name for name, _ in sent)
    assert {ln["grpc_type"] for ln in lines} == {"unknown"}
    assert {ln["level"] for ln in lines} == {"warning"}  # as any server-error code
    # one span per call, its name bounded; the name sent in rpc.method_original
    await until(lambda: len(tracing.spans()) == len(sent) + 1, what="spans")
    spans = [s for s in tracing.spans() if s.name != f"{SERVICE}/Unary"]
    assert {s.name for s in spans} == {"_OTHER"}
    assert sorted(s.attributes["rpc.method_original"] for s in spans) == sorted(
        name for name, _ in sent)
    assert {s.attributes["rpc.method"] for s in spans} == {"_OTHER"}
    assert {s.attributes["rpc.grpc.status_code"] for s in spans} == {12}


async def test_a_flood_of_random_names_makes_no_new_series(registry: LocalRegistry) -> None:
    prom = CollectorRegistry()
    async with _mesh(registry, telemetry=TelemetryOptions(tracing=False, registry=prom,
                                                          access_log=False),
                     interceptors=(_PassThrough(),)) as (_srv, ch):
        await ch.unary_unary(method("Unary"))(b"hi", timeout=5)
        before = set(_samples(prom, "grpc_server_started_total"))
        for _ in range(40):
            err = await _call(ch, f"/scan.{uuid.uuid4().hex}/{uuid.uuid4().hex}", "unary")
            assert err.code() is grpc.StatusCode.UNIMPLEMENTED
        await until(lambda: _other(prom)[1] == 40.0, what="40 counted")
        after = set(_samples(prom, "grpc_server_started_total"))
    assert after - before == {("unknown", "other", "other")}
    assert len(after) == 2


@pytest.mark.parametrize("check", ["auth", "rate_limit"])
async def test_unknown_methods_are_answered_before_the_checks(
        registry: LocalRegistry, check: str) -> None:
    """An unauthenticated or rate-limited caller of an unknown method gets
    ``UNIMPLEMENTED``, as before (and as grpc-go answers it, before its interceptors),
    and is counted; a known method still gets the check's answer."""
    prom = CollectorRegistry()
    opts: dict[str, Any] = {"telemetry": TelemetryOptions(tracing=False, registry=prom)}
    if check == "auth":
        opts["auth"] = AuthOptions(verifier=_NoTokens(), check_peers=False)
        refused = grpc.StatusCode.UNAUTHENTICATED
        calls = 1
    else:
        opts["rate_limit"] = RateLimitOptions(default_rule="1/minute")
        refused = grpc.StatusCode.RESOURCE_EXHAUSTED
        calls = 2
    async with _mesh(registry, **opts, interceptors=(_PassThrough(),)) as (_srv, ch):
        if calls > 1:  # the one call the rate allows
            await ch.unary_unary(method("Unary"))(b"hi", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as known:
            await ch.unary_unary(method("Unary"))(b"hi", timeout=5)
        assert known.value.code() is refused
        for _ in range(3):
            err = await _call(ch, method("Nope"), "unary")
            assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                                   _NOT_FOUND)
        await until(lambda: _other(prom)[1] == 3.0, what="3 unknown calls counted")


async def test_a_draining_server_answers_unknown_methods_unimplemented(
        registry: LocalRegistry) -> None:
    """In the drain's refusal phase a meshkit client's unary call is nacked; an unknown
    method is still answered ``UNIMPLEMENTED`` (nothing to retry elsewhere) and counted."""
    prom = CollectorRegistry()
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=4, grace_s=1,
                                 interceptors=(_PassThrough(),),
                                 telemetry=TelemetryOptions(tracing=False, registry=prom)))
    await srv.start()
    draining = None
    try:
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{srv.port}",
                options=(("grpc.secondary_user_agent", MESH_USER_AGENT),)) as ch:
            await ch.unary_unary(method("Unary"))(b"hi", timeout=5)
            draining = asyncio.ensure_future(srv.drain())

            async def nacked() -> bool:
                try:
                    await ch.unary_unary(method("Unary"))(b"hi", timeout=5)
                except grpc.aio.AioRpcError:
                    return True
                return False

            await until(nacked, what="the drain's refusal phase")
            err = await _call(ch, method("Nope"), "unary")
            assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                                   _NOT_FOUND)
            await until(lambda: _other(prom)[1] == 1.0, what="counted")
    finally:
        if draining is not None:
            await asyncio.wait_for(draining, 30)
        await srv.drain()


async def test_on_a_plain_grpc_aio_server_unknown_methods_are_other_too() -> None:
    """On a grpc.aio server of your own with meshkit's interceptor (``registered`` unset:
    every served method by its name), a method no handler serves is ``other``, not a new
    series per name, and the answer is grpc.aio's."""
    prom = CollectorRegistry()
    icpt = TelemetryServerInterceptor("s", TelemetryOptions(tracing=False, registry=prom,
                                                            access_log=False))
    assert icpt.registered is None
    server = grpc.aio.server(interceptors=(icpt,))
    server.add_generic_rpc_handlers((handler("p1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for shape in _SHAPES:
                err = await _call(ch, f"/a.B/C{shape}", shape)
                assert (err.code(), err.details()) == (grpc.StatusCode.UNIMPLEMENTED,
                                                       _NOT_FOUND), shape
            await until(lambda: _other(prom) == (4.0, 4.0, 4.0), what="4 counted")
    finally:
        await server.stop(None)
    assert set(_samples(prom, "grpc_server_started_total")) == {
        ("unknown", "other", "other")}


_LONG_NAMES_PROCESS = """
import asyncio, gc, json, sys
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions, configure_logging, flush_logs
from meshkit.observability import _logging
from meshkit.observability._server import TelemetryServerInterceptor
from tests.observability.test_unknown_methods import _PassThrough
from tests.support.echo import add_echo

NAMES = [f"/scan.v{i}.S/" + "x" * 7000 for i in range(20)]

async def main() -> None:
    configure_logging("info", json=True, access_log_flush_interval_s=0.05)
    tel = TelemetryOptions(tracing=False, quiet_methods=("/grpc.health.v1.Health/*",))
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=3.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, grace_s=1.0, telemetry=tel,
                                 interceptors=(_PassThrough(),)))
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        for name in NAMES:
            try:
                await ch.unary_unary(name)(b"x", timeout=5)
            except grpc.aio.AioRpcError as e:
                assert e.code() is grpc.StatusCode.UNIMPLEMENTED, e
    await srv.drain()
    await reg.close()
    flush_logs()
    gc.collect()
    (icpt,) = [o for o in gc.get_objects() if isinstance(o, TelemetryServerInterceptor)]
    held = {"json_strs": sum(len(k) > 6000 for k in _logging._json_strs),
            "quiet": sum(len(k) > 6000 for k in icpt._quiet._cache)}
    print("HELD " + json.dumps(held), file=sys.stderr, flush=True)

asyncio.run(main())
"""


def test_long_unknown_names_are_logged_as_sent_and_kept_in_no_cache(tmp_path: Any) -> None:
    """A caller sends method names of about 7 KB (grpc core takes them up to its 8 KiB
    soft header limit): the access line carries each as sent, but no per-name cache of
    meshkit keeps any (the JSON access log's string cache and the quiet-methods matcher's
    would have held 4096 such names, some 85 MB, for a scanner's asking)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _LONG_NAMES_PROCESS, str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60, cwd=root, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = json.loads(next(line[5:] for line in proc.stderr.splitlines()
                           if line.startswith("HELD ")))
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() + proc.stderr.splitlines()
             if ln.startswith('{"event":"rpc"')]
    sent = sorted(ln["method"] for ln in lines if ln["code"] == "UNIMPLEMENTED")
    assert sent == sorted(f"/scan.v{i}.S/" + "x" * 7000 for i in range(20))
    assert {ln["grpc_type"] for ln in lines if ln["code"] == "UNIMPLEMENTED"} == {"unknown"}
    assert held == {"json_strs": 0, "quiet": 0}
