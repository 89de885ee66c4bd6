"""Structured logs: access-log events per call, trace ids on handler logs, no secrets."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.trace import SpanKind

from meshkit.errors import ConfigError
from meshkit.observability import (
    BufferedLineWriter,
    TelemetryOptions,
    add_trace_context,
    configure_logging,
    flush_logs,
    is_sensitive_key,
    redact_secrets,
)
from meshkit.observability._logging import _AccessLog
from tests.observability.conftest import FRONT, ChainFactory, Tracing
from tests.support.contexts import ServedContext as _ServedContext
from tests.support.wait import until

SECRET = "Bearer s3cr3t-t0ken-value"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """structlog set up like configure_logging (trace ids, redaction, JSON) into a buffer."""
    buf = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    add_trace_context, redact_secrets, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(buf),
        cache_logger_on_first_use=False,
    )
    yield buf
    structlog.reset_defaults()


async def test_log_lines_carry_their_spans_trace_id_and_no_secrets(
        chain: ChainFactory, tracing: Tracing, json_lines: io.StringIO) -> None:
    """Access-log events and a handler's own log line carry the trace id of the call's
    spans; the authorization metadata value appears in no line."""
    c = await chain()
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    await relay(b"hi", timeout=5, metadata=(("authorization", SECRET), ("x-user", "u1")))
    await until(lambda: len(tracing.spans()) >= 4, what="4 spans")
    trace_ids = {format(s.context.trace_id, "032x") for s in tracing.spans()}
    assert len(trace_ids) == 1
    text = json_lines.getvalue()
    assert SECRET not in text and "s3cr3t" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    access = [ln for ln in lines if ln["event"] == "rpc"]
    assert len(access) == 4  # client + server on each hop
    for ln in access:
        assert ln["trace_id"] in trace_ids
        assert ln["code"] == "OK" and ln["duration_ms"] >= 0
        assert ln["level"] == "info"
    client_front = next(ln for ln in access if ln["side"] == "client" and ln["target"] ==
                        "front")
    assert client_front["attempts"] == 1
    assert client_front["method"] == f"/{FRONT}/Relay"
    assert client_front["peer"] == f"127.0.0.1:{c.front.port}"
    server_echo = next(ln for ln in access if ln["side"] == "server" and ln["service"] ==
                       "echo")
    assert server_echo["peer"].startswith("127.0.0.1:")
    (front_span,) = [s for s in tracing.spans()
                     if s.name == f"{FRONT}/Relay" and s.kind is SpanKind.SERVER]
    (handler_line,) = [ln for ln in lines if ln["event"] == "relaying"]
    assert handler_line["trace_id"] == format(front_span.context.trace_id, "032x")
    assert handler_line["span_id"] == format(front_span.context.span_id, "016x")
    assert "[REDACTED]" in json.dumps(handler_line["metadata"])


async def test_access_log_can_include_allowed_metadata_only(
        chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions,
        json_lines: io.StringIO) -> None:
    """log_metadata adds the named keys' values, and never others."""
    import dataclasses

    c = await chain(telemetry_opts=dataclasses.replace(telemetry, log_metadata=("x-user",)))
    await c.client.unary_unary(f"/{FRONT}/Relay")(
        b"hi", timeout=5, metadata=(("authorization", SECRET), ("x-user", "u1")))

    def served() -> list[dict[str, Any]]:  # front's line: written once its status is sent
        lines = [json.loads(x) for x in json_lines.getvalue().splitlines()]
        return [ln for ln in lines if ln["event"] == "rpc" and ln["side"] == "server"
                and ln["service"] == "front"]

    await until(lambda: bool(served()), what="front's access line")
    assert served()[0]["md"] == {"x-user": "u1"}
    assert SECRET not in json_lines.getvalue()


async def test_a_hedged_calls_access_line_names_the_endpoint_that_answered(
        echo_servers: Any, registry: Any, json_lines: io.StringIO) -> None:
    """A hedged call answered by its first attempt (the hedge, sent 0.5 s later to the
    other instance, is cancelled) wrote the hedge's endpoint as its ``peer`` (the
    endpoint picked last), pointing the operator at the server that logged the call
    CANCELLED. Now ``peer`` is the endpoint that answered."""
    import asyncio

    from prometheus_client import CollectorRegistry

    import meshkit
    from meshkit.resilience import RetryOptions, RetryPolicy
    from tests.support.echo import method

    opts = TelemetryOptions(tracing=False, registry=CollectorRegistry())
    ports = {}
    for iid in ("e1", "e2"):
        ports[iid] = (await echo_servers(iid, telemetry=opts)).port
    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2,
                                             hedge_delay_s=0.5))
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=opts, retry=retry))

    def client_lines() -> list[dict[str, Any]]:
        return [ln for ln in map(json.loads, json_lines.getvalue().splitlines())
                if ln["event"] == "rpc" and ln["side"] == "client"
                and ln["method"].endswith("/Sleep")]

    try:
        async with asyncio.timeout(10):
            await ch.wait_for_endpoints(2)
            sleep: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
                method("Sleep"))
            answer = await sleep(b"1000", timeout=5)
            await until(lambda: bool(client_lines()), what="the client's access line")
    finally:
        await ch.close()
    winner = answer.decode()
    (line,) = client_lines()
    assert (line["attempts"], line["peer"]) == (2, f"127.0.0.1:{ports[winner]}")

async def test_access_log_metadata_shows_bytes_values_and_every_value_of_a_repeated_key(
        chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions,
        json_lines: io.StringIO) -> None:
    """A log_metadata value the caller passed as bytes (legal for a text key) is in the
    client's line as in the server's, as text; a key the call carries more than once
    (metadata is a multimap) is logged as the list of its values, in order."""
    import dataclasses

    c = await chain(telemetry_opts=dataclasses.replace(
        telemetry, log_metadata=("x-user", "x-tenant")))
    await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5, metadata=(
        ("x-user", "alice"), ("x-tenant", b"acme"), ("x-user", b"bob")))

    def lines(side: str) -> list[dict[str, Any]]:
        got = [json.loads(x) for x in json_lines.getvalue().splitlines()]
        return [ln for ln in got if ln["event"] == "rpc" and ln["side"] == side
                and ln.get("service", ln.get("target")) == "front"]

    await until(lambda: bool(lines("server")) and bool(lines("client")),
                what="front's access lines")
    want = {"x-user": ["alice", "bob"], "x-tenant": "acme"}
    assert lines("server")[0]["md"] == want
    assert lines("client")[0]["md"] == want


@pytest.mark.parametrize("key", ["authorization", "x-api-key", "cookie", "x-auth-token",
                                 "grpc-trace-bin", "X-User"])
def test_log_metadata_refuses_credentials_and_binary_keys(key: str) -> None:
    """Credential-like, binary and upper-case log_metadata keys are refused when built."""
    with pytest.raises(ConfigError, match="got"):
        TelemetryOptions(log_metadata=(key,))


def test_sensitive_key_detection() -> None:
    """Credential names are recognised whatever their case and separators; others not."""
    for key in ("authorization", "Authorization", "password", "client_secret", "jwt",
                "session-id", "private_key", "x-api-key", "access_token"):
        assert is_sensitive_key(key), key
    for key in ("x-user", "traceparent", "idempotency-key", "method", "peer"):
        assert not is_sensitive_key(key), key


def test_redact_secrets_masks_fields_dicts_and_pairs() -> None:
    """redact_secrets masks credential fields, one level into dicts, and metadata pairs."""
    out = redact_secrets(None, "info", {
        "event": "x", "password": "p", "headers": {"Authorization": "a", "ok": 1},
        "metadata": [("authorization", "a"), ("x-user", "u")], "user": "u"})
    assert out["password"] == "[REDACTED]"
    assert out["headers"] == {"Authorization": "[REDACTED]", "ok": 1}
    assert out["metadata"] == [("authorization", "[REDACTED]"), ("x-user", "u")]
    assert out["user"] == "u"


def test_redact_secrets_masks_grpc_aio_metadata_and_other_pair_collections(
        json_lines: io.StringIO) -> None:
    """The metadata grpc.aio hands out (``initial_metadata()``, ``trailing_metadata()``,
    an interceptor's ``client_call_details.metadata``) is a ``grpc.aio.Metadata``, no
    list: its credential values are redacted too (README: credential-named fields are
    never logged), as in any other collection of ``(str, value)`` pairs; strings, bytes
    and one-shot iterators are left as they are."""
    md = grpc.aio.Metadata(("authorization", SECRET), ("set-cookie", "sid=c00kie-value"),
                           ("x-user", "u1"))
    pairs = iter([("token", "t")])
    out = redact_secrets(None, "info", {
        "event": "x", "metadata": md, "pairs": {("cookie", "c")}, "text": "ab",
        "raw": b"ab", "once": pairs})
    assert out["metadata"] == [("authorization", "[REDACTED]"), ("set-cookie", "[REDACTED]"),
                               ("x-user", "u1")]
    assert out["pairs"] == [("cookie", "[REDACTED]")]
    assert (out["text"], out["raw"], out["once"]) == ("ab", b"ab", pairs)
    structlog.get_logger("app").info("answer headers", metadata=md)
    line = json_lines.getvalue()
    assert "answer headers" in line and "u1" in line
    assert SECRET not in line and "c00kie-value" not in line, line


def test_redact_secrets_masks_pairs_whose_keys_are_bytes() -> None:
    """Metadata may name a key as ``bytes`` (grpc.aio and check_metadata accept
    ``(b"x-request-id", "1")``): a pair collection holding such a key is still one, and a
    credential named in bytes is redacted too."""
    md = [("authorization", "Bearer s3cr3t"), (b"x-request-id", "1"), (b"x-api-key", "k3y")]
    out = redact_secrets(None, "info", {"event": "calling", "metadata": md,
                                        "headers": {b"Cookie": "c", b"ok": 1}})
    assert out["metadata"] == [("authorization", "[REDACTED]"), (b"x-request-id", "1"),
                               (b"x-api-key", "[REDACTED]")]
    assert out["headers"] == {b"Cookie": "[REDACTED]", b"ok": 1}


def test_configure_logging_validates_level_and_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_logging refuses unknown levels and formats, quoting them as written."""
    with pytest.raises(ConfigError, match=r"level .*'loud'"):
        configure_logging("loud")
    monkeypatch.setenv("MESHKIT_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="'xml'"):
        configure_logging("info")
    structlog.reset_defaults()


class CountingStream(io.StringIO):
    """A text stream that counts write() calls."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


async def test_buffered_writer_batches_lines_until_its_interval() -> None:
    """Inside a loop lines wait up to flush_interval_s and go out in one write."""
    import asyncio

    out = CountingStream()
    w = BufferedLineWriter(out, flush_interval_s=0.05)
    for i in range(5):
        w.info(f"line {i}")
    assert out.getvalue() == "" and out.writes == 0
    await until(lambda: out.writes > 0, what="the timed flush", timeout_s=2)
    assert out.getvalue() == "".join(f"line {i}\n" for i in range(5))
    assert out.writes == 1
    w.info("late")
    w.flush()
    assert out.getvalue().endswith("late\n") and out.writes == 2
    await asyncio.sleep(0.1)  # the timer armed by "late" finds nothing left to write
    assert out.writes == 2


async def test_buffered_writer_writes_at_once_when_full_or_interval_zero() -> None:
    """A full buffer and interval 0 write immediately; so does flush_logs()."""
    out = CountingStream()
    full = BufferedLineWriter(out, flush_interval_s=30, max_buffer_bytes=10)
    full.info("short")
    assert out.writes == 0
    full.info("longer")
    assert out.getvalue() == "short\nlonger\n"
    now = BufferedLineWriter(out, flush_interval_s=0)
    now.warning("x")
    assert out.getvalue().endswith("longer\nx\n")
    full.info("pending")
    flush_logs()
    assert out.getvalue().endswith("x\npending\n")



async def test_buffered_writer_keeps_one_timer_when_full_buffers_write_early() -> None:
    """Writes forced by a full buffer leave the interval's timer armed: under load the
    loop holds one flush timer per writer, not one more after every early write, and
    the lines after an early write go out with that timer."""
    import asyncio

    out = CountingStream()
    w = BufferedLineWriter(out, flush_interval_s=0.05, max_buffer_bytes=20)
    fired = []
    on_timer = w._on_timer
    w._on_timer = lambda: (fired.append(1), on_timer())[1]  # type: ignore[method-assign]

    for i in range(30):
        w.info(f"line {i:02d}")  # 8 characters: every third line fills the buffer
    assert out.writes == 10
    w.info("tail")
    await until(lambda: out.getvalue().endswith("tail\n"), what="the timed flush",
                timeout_s=2)
    await asyncio.sleep(0.15)  # three intervals: any other timer armed has fired by now
    assert out.writes == 11 and len(fired) == 1


def test_buffered_writer_outside_a_loop_writes_each_line() -> None:
    """With no running event loop nothing is left waiting for a timer."""
    out = io.StringIO()
    w = BufferedLineWriter(out, flush_interval_s=10)
    w.info("a")
    assert out.getvalue() == "a\n"


def test_buffered_writer_rearms_its_timer_when_the_loop_holding_it_is_gone() -> None:
    """A line left pending by a loop that ended before its timer fired goes out with the
    next loop's timer, not only at exit (one asyncio.run() after another)."""
    import asyncio

    out = CountingStream()
    w = BufferedLineWriter(out, flush_interval_s=0.05)

    async def first() -> None:
        w.info("from the first loop")

    async def second() -> None:
        w.info("from the second loop")
        await until(lambda: out.writes > 0, what="the timed flush", timeout_s=2)

    asyncio.run(first())
    assert out.writes == 0  # that loop closed before its timer fired
    asyncio.run(second())
    assert out.getvalue() == "from the first loop\nfrom the second loop\n"
    assert out.writes == 1


def test_a_captured_record_after_the_timers_loop_is_gone_goes_out_with_the_next_loop() -> None:
    """``add`` (the access log's per-call path) buffers a record only while the loop that
    holds the timer still runs: after that loop closed, the record re-arms the timer on
    the running loop and goes out with it, with the line the first loop left."""
    import asyncio
    import json
    import time as _time

    out = CountingStream()
    w = BufferedLineWriter(out, flush_interval_s=0.05)

    async def first() -> None:
        w.info("from the first loop")

    async def second() -> None:
        w.add((_time.time(), "info", "rpc", {"from": "the second loop"}, None, None, None))
        await until(lambda: out.writes > 0, what="the timed flush", timeout_s=2)

    asyncio.run(first())
    assert out.writes == 0
    asyncio.run(second())
    first_line, record = out.getvalue().splitlines()
    assert first_line == "from the first loop"
    assert json.loads(record)["from"] == "the second loop"
    assert out.writes == 1


@pytest.mark.parametrize(("kwargs", "quoted"), [
    ({"flush_interval_s": -1}, "-1"), ({"flush_interval_s": 61}, "61"),
    ({"max_buffer_bytes": -5}, "-5")])
def test_buffered_writer_refuses_bad_values(kwargs: dict[str, float], quoted: str) -> None:
    """Out-of-range settings fail at construction, quoting the value."""
    with pytest.raises(ConfigError, match=f"got {quoted}"):
        BufferedLineWriter(io.StringIO(), **kwargs)  # type: ignore[arg-type]


_CONFIGURED_PROCESS = """
import asyncio, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions, configure_logging
from tests.support.echo import add_echo, method

async def main() -> None:
    configure_logging("info", json=True, access_log_flush_interval_s=30)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = TelemetryOptions(tracer_provider=provider)
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=1.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg, options=meshkit.ServeOptions(
        insecure=True, drain_delay_s=0, grace_s=1.0, telemetry=tel))
    await srv.start()
    async with meshkit.dial("echo", registry=reg, options=meshkit.DialOptions(
            insecure=True, telemetry=tel)) as ch:
        await ch.unary_unary(method("Unary"))(b"hi", timeout=5, metadata=(
            ("authorization", "Bearer s3cr3t-t0ken-value"),))
        print("CALLED", file=sys.stderr, flush=True)  # close() and drain() flush
    await srv.drain()
    await reg.close()
    for s in exporter.get_finished_spans():
        print(format(s.context.trace_id, "032x"))

asyncio.run(main())
"""


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of ``text`` that are JSON objects, parsed."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                out.append(obj)
    return out


def test_configured_access_log_is_json_batched_and_carries_trace_ids(tmp_path: Path) -> None:
    """A process that called configure_logging(json=True) writes its access lines to stderr
    as JSON in a batch (none before the channel closes or the server drains, with a 30 s
    interval), carrying
    their spans' trace ids and no credential."""
    proc = subprocess.run([sys.executable, "-c", _CONFIGURED_PROCESS, str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    before, _, after = proc.stderr.partition("CALLED\n")
    assert after, proc.stderr
    assert not [ln for ln in _json_lines(before) if ln.get("event") == "rpc"]
    assert SECRET not in proc.stderr
    access = [ln for ln in _json_lines(after) if ln.get("event") == "rpc"]
    assert sorted(ln["side"] for ln in access) == ["client", "server"]
    assert {ln["trace_id"] for ln in access} == set(proc.stdout.split())
    assert all(ln["level"] == "info" and "timestamp" in ln for ln in access)


def test_configure_logging_refuses_a_bad_flush_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush interval that is not seconds in range fails, quoted, before anything changes."""
    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)
    monkeypatch.setenv("MESHKIT_ACCESS_LOG_FLUSH_S", "soon")
    with pytest.raises(ConfigError, match="'soon'"):
        configure_logging("info", json=True)
    with pytest.raises(ConfigError, match="got 99"):
        configure_logging("info", json=True, access_log_flush_interval_s=99)
    structlog.reset_defaults()


_LOG_VARIABLES = ("MESHKIT_LOG_LEVEL", "MESHKIT_LOG_FORMAT", "MESHKIT_ACCESS_LOG_FLUSH_S")


@pytest.mark.parametrize(("variable", "value"), [
    ("MESHKIT_LOG_LEVEL", "verbose"),
    ("MESHKIT_LOG_LEVEL", "info debug"),
    ("MESHKIT_LOG_FORMAT", "xml"),
    ("MESHKIT_ACCESS_LOG_FLUSH_S", "120"),
    ("MESHKIT_ACCESS_LOG_FLUSH_S", "-1"),
    ("MESHKIT_ACCESS_LOG_FLUSH_S", "nan"),
    ("MESHKIT_ACCESS_LOG_FLUSH_S", "inf"),
    ("MESHKIT_ACCESS_LOG_FLUSH_S", "soon"),
])
def test_configure_logging_env_errors_name_the_variable(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad logging variable in a pod's manifest (``MESHKIT_ACCESS_LOG_FLUSH_S=120``,
    ``MESHKIT_LOG_LEVEL=verbose``): configure_logging's ConfigError names the variable the
    operator has to fix and quotes the value as written, before anything is changed. It
    used to say ``flush_interval_s must be in [0, 60] seconds, got 120.0`` (the writer's
    argument) or ``log level must be one of [...], got 'VERBOSE'``."""
    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)
    for k in _LOG_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(variable, value)
    before = structlog.get_config()
    with pytest.raises(ConfigError) as info:
        configure_logging()
    assert variable in str(info.value) and repr(value) in str(info.value), info.value
    assert structlog.get_config() == before


@pytest.mark.parametrize(("env", "level", "json_format", "flush_s"), [
    ({"MESHKIT_LOG_LEVEL": " warning\n", "MESHKIT_LOG_FORMAT": " JSON ",
      "MESHKIT_ACCESS_LOG_FLUSH_S": " 0.5 "}, logging.WARNING, True, 0.5),
    ({"MESHKIT_LOG_LEVEL": "  ", "MESHKIT_LOG_FORMAT": "console\t",
      "MESHKIT_ACCESS_LOG_FLUSH_S": " "}, logging.INFO, False, 0.0),
    ({"MESHKIT_LOG_LEVEL": "", "MESHKIT_LOG_FORMAT": "",
      "MESHKIT_ACCESS_LOG_FLUSH_S": ""}, logging.INFO, None, None),
])
def test_configure_logging_strips_its_variables(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], level: int,
        json_format: bool | None, flush_s: float | None) -> None:
    """Blanks around a logging variable's value (a YAML block scalar's newline, a padded
    ``value: " warning"``) are ignored, as for meshkit's other variables, and a blank
    value is an unset one. ``MESHKIT_LOG_LEVEL=" warning"`` used to be refused, and
    ``MESHKIT_LOG_FORMAT=" json"`` too."""
    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        configure_logging()
        config = structlog.get_config()
        assert config["wrapper_class"] is structlog.make_filtering_bound_logger(level)
        renderer = config["processors"][-1]
        if json_format is not None:
            assert isinstance(renderer, structlog.processors.JSONRenderer) is json_format
        writer = getattr(_AccessLog.logger, "_writer", None) or _AccessLog.logger._logger
        if flush_s is not None:
            assert writer.flush_interval_s == flush_s
    finally:
        flush_logs()
        structlog.reset_defaults()


def test_json_dumps_uses_orjson_and_falls_back_for_what_it_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Log lines are JSON whichever encoder writes them: orjson (installed with
    ``meshkit[fast]``, which the dev extra pulls in), json.dumps for what orjson refuses
    (non-string keys, integers beyond 64 bits), and json.dumps alone without orjson."""
    import orjson

    from meshkit.observability import _logging

    assert _logging._orjson is orjson
    event = {"event": "rpc", "duration_ms": 0.412, "md": {"x-user": "ü"}, "ok": True,
             "obj": object()}
    line = _logging.json_dumps(event, default=repr)
    assert line == orjson.dumps(event, default=repr).decode()
    assert json.loads(line)["md"] == {"x-user": "ü"}
    assert json.loads(_logging.json_dumps({1: "a", "big": 2**70}, default=repr)) == {
        "1": "a", "big": 2**70}
    monkeypatch.setattr(_logging, "_orjson", None)
    assert _logging.json_dumps(event, default=repr) == json.dumps(event, default=repr)


@pytest.mark.parametrize("traced", [True, False])
async def test_captured_access_records_keep_no_call_objects(
        chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions, traced: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A captured access record waits for its batch, so it keeps only its fields' values:
    not the client's call details (which hold the attempt's grpc call), not a context copy
    while nothing was bound with structlog.contextvars. Its line still carries the call's
    fields and the trace ids: meshkit's span's, or (tracing off) the caller's own span's."""
    import dataclasses

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import INVALID_SPAN_CONTEXT

    from meshkit.interceptors import ClientCallDetails
    from meshkit.observability import _logging
    from meshkit.observability._logging import BufferedLineWriter, _AccessWriter

    out = io.StringIO()
    monkeypatch.setattr(_logging, "_BOUND_NAMES", {})  # nothing bound in this process
    monkeypatch.setattr(_AccessLog, "logger",
                        _AccessWriter(BufferedLineWriter(out, flush_interval_s=30), 20))
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracing=traced))
    user_span = TracerProvider().get_tracer("app").start_span("checkout")
    with _logging.trace.use_span(user_span, end_on_exit=True):
        await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5)
    buf = _AccessLog.logger._writer._buf
    await until(lambda: len(buf) == 4)  # client and server, two hops (spans end a turn later)
    for _, level, event, _build, args, ctx, sc in buf:
        assert (level, event, ctx) == ("info", "rpc", None)
        assert not any(isinstance(a, ClientCallDetails | grpc.aio.Call) for a in args)
        assert sc is None or sc is INVALID_SPAN_CONTEXT or sc.is_valid  # no span: shared
    _AccessLog.logger._writer.flush()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    client = next(ln for ln in lines if ln["side"] == "client" and ln["target"] == "front")
    assert client["attempts"] == 1 and client["peer"].startswith("127.0.0.1:")
    assert client["code"] == "OK" and client["grpc_type"] == "unary"
    app = user_span.get_span_context()
    assert client["trace_id"] == format(app.trace_id, "032x")
    if traced:  # meshkit's spans, children of the caller's: one trace on every line
        assert {ln["trace_id"] for ln in lines} == {client["trace_id"]}
        assert client["span_id"] != format(app.span_id, "016x")
    else:  # no meshkit span: the caller's own span, and no trace context sent on
        assert client["span_id"] == format(app.span_id, "016x")
        assert sum("trace_id" in ln for ln in lines) == 1


async def test_captured_access_records_orjson_refuses_or_that_fail_still_give_a_line() -> None:
    """A captured record whose fields orjson refuses is written by json.dumps; one whose
    fields cannot be built at all is kept as an "unrenderable" line; the lines around
    them are unaffected."""
    from meshkit.observability._logging import BufferedLineWriter, _AccessWriter, write_access

    out = io.StringIO()
    saved = _AccessLog.logger
    _AccessLog.logger = _AccessWriter(BufferedLineWriter(out, flush_interval_s=30), 20)

    def build(n: int) -> dict[str, Any]:
        if n == 3:
            raise ValueError("no fields")
        return {"n": n, "big": 2**70} if n == 2 else {"n": n}

    try:
        for n in (1, 2, 3, 4):
            write_access(False, build, (n,))
        _AccessLog.logger._writer.flush()
    finally:
        _AccessLog.logger = saved
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [ln.get("n") for ln in lines] == [1, 2, None, 4]
    assert lines[1]["big"] == 2**70 and lines[1]["event"] == "rpc"
    assert lines[2]["event"] == "rpc" and "unrenderable" in lines[2]


async def test_captured_access_event_renders_the_context_it_was_written_in() -> None:
    """An access event captured unbuilt is rendered later with what was current when it
    was written: the span's trace and span id, and the structlog contextvars bound then
    (not what is current at render time); no span, no ids. (In an event loop, where lines
    wait for the batch.)"""
    from opentelemetry.sdk.trace import TracerProvider

    from meshkit.observability._logging import BufferedLineWriter, _AccessWriter, write_access

    out = io.StringIO()
    saved = _AccessLog.logger
    _AccessLog.logger = _AccessWriter(BufferedLineWriter(out, flush_interval_s=30), 20)
    tracer = TracerProvider().get_tracer("test")
    built: list[int] = []

    def build(n: int) -> dict[str, Any]:
        built.append(n)
        return {"side": "client", "n": n}

    try:
        with structlog.contextvars.bound_contextvars(request_id="r-1"), \
                tracer.start_as_current_span("call") as span:
            write_access(False, build, (1,))
        write_access(True, build, (2,))
        assert built == []  # nothing is built on the call's path
        with structlog.contextvars.bound_contextvars(request_id="r-other"), \
                tracer.start_as_current_span("later"):
            _AccessLog.logger._writer.flush()
    finally:
        _AccessLog.logger = saved
    first, second = (json.loads(ln) for ln in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert first["trace_id"] == format(ctx.trace_id, "032x")
    assert first["span_id"] == format(ctx.span_id, "016x")
    assert first["request_id"] == "r-1" and first["level"] == "info" and first["n"] == 1
    assert "trace_id" not in second and "request_id" not in second
    assert second["level"] == "warning" and second["event"] == "rpc"


def _generic(event: Any, record: tuple[Any, ...]) -> str:
    """``record`` rendered the generic way (fields dict, then the encoder)."""
    from meshkit.observability._logging import render_access

    return render_access((*record[:3], lambda *a: event.fields(*a), *record[4:]))


_LINE_PEERS = ("ipv4:127.0.0.1:5050", "ipv6:[::1]:443", "ipv6:%5B::1%5D:443",
               "unix:/tmp/s \"q\"\\", "", "odd")
_LINE_DURATIONS_S = (0.0, 1e-7, 0.0004999, 0.0005, 0.000123456, 0.0015, 0.1, 1.0, 2.5e-3,
                     12.3456789, 3600.0, 86400.123456)


@pytest.mark.parametrize("duration_s", _LINE_DURATIONS_S)
@pytest.mark.parametrize("traced", ["none", "valid", "invalid"])
def test_access_event_lines_are_exactly_the_generic_rendering(duration_s: float,
                                                              traced: str) -> None:
    """The JSON writer's one-step lines (AccessEvent.line) for both sides are byte for
    byte what the generic path renders from the same fields: keys, order, number and
    string formats, escapes, trace ids, level and timestamp."""
    from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, TraceFlags

    from meshkit.balancer import Endpoint
    from meshkit.discovery import Instance
    from meshkit.observability._client import _CLIENT_ACCESS
    from meshkit.observability._client import _Method as ClientMethod
    from meshkit.observability._semconv import MethodNames
    from meshkit.observability._server import _Method as ServerMethod
    from meshkit.observability._server import _ServerAccess

    sc = {"none": None, "invalid": INVALID_SPAN_CONTEXT,
          "valid": SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, False,
                               TraceFlags(1))}[traced]
    ts = 1_764_806_400.9999996  # rounds up into the next second
    server = _ServerAccess('svc "é"\n')
    lines = 0
    for method in ("/pkg.Svc/M", '/we"ird\\/Méthod'):
        sm = ServerMethod(MethodNames(method, "unary"), None, False, ())
        cm = ClientMethod(MethodNames(method, "server_stream"), None, False)
        for code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE):
            for level in ("info", "warning"):
                for peer in _LINE_PEERS:
                    for identity in (None, "spiffe://example.org/ns/a/sa/\"b\""):
                        record = (ts, level, "rpc", server,
                                  (sm, code, duration_s, peer, identity, None), None, sc)
                        assert server.line(record[4], level, ts, sc) == \
                            _generic(server, record)
                        lines += 1
                for last in (None, Endpoint(Instance(service="echo", instance_id="e1",
                                                     host="::1", port=8443)).address):
                    for target in ("echo", "ta\"rget"):
                        record = (ts, level, "rpc", _CLIENT_ACCESS,
                                  (cm, target, last, 2, code, duration_s, None), None, sc)
                        assert _CLIENT_ACCESS.line(record[4], level, ts, sc) == \
                            _generic(_CLIENT_ACCESS, record)
                        lines += 1
    assert lines == 2 * 2 * 2 * (6 * 2 + 2 * 2)


def test_access_event_lines_with_metadata_or_bound_contextvars_take_the_generic_path(
) -> None:
    """A line with logged metadata, or a record captured with structlog contextvars bound
    (``ctx`` set), is rendered from the fields dict: the metadata and the bound values are
    in it."""
    import contextvars

    from meshkit.observability._logging import render_access
    from meshkit.observability._semconv import MethodNames
    from meshkit.observability._server import _Method as ServerMethod
    from meshkit.observability._server import _ServerAccess

    server = _ServerAccess("svc")
    m = ServerMethod(MethodNames("/pkg.Svc/M", "unary"), None, False, ("tenant",))
    args = (m, grpc.StatusCode.OK, 0.001, "ipv4:10.0.0.1:1", None, {"tenant": "t1"})
    assert server.line(args, "info", 1.0, None) is None
    line = json.loads(render_access((1.0, "info", "rpc", server, args, None, None)))
    assert line["md"] == {"tenant": "t1"} and line["duration_ms"] == 1.0

    with structlog.contextvars.bound_contextvars(request_id="r-9"):
        ctx = contextvars.copy_context()
    plain = (m, grpc.StatusCode.OK, 0.001, "ipv4:10.0.0.1:1", None, None)
    line = json.loads(render_access((1.0, "info", "rpc", server, plain, ctx, None)))
    assert list(line)[:2] == ["request_id", "event"] and line["request_id"] == "r-9"
    assert line["peer"] == "10.0.0.1:1" and line["timestamp"] == "1970-01-01T00:00:01.000000Z"


def _client_call_details() -> Any:
    from meshkit.interceptors import CallKind, ClientCallDetails

    return ClientCallDetails(service="echo", method="/meshkit.test.Echo/Unary",
                             kind=CallKind.UNARY_UNARY, timeout_s=5, metadata=())


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("busy", [False, True])
async def test_json_lines_are_captured_after_a_servers_answer_only_on_an_idle_loop(
        side: str, busy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server captures a JSON access record after the response when nothing else is
    ready on the loop (the turn this adds is idle time), in the loop's next turn, after the
    handler's answer went back to grpc; with other callbacks ready, before the answer. A
    client captures it before the caller gets its answer, idle loop or not (deferred past
    the next call's send it raised the p50 at one caller on one VM). Metrics are recorded
    before the answer either way."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryClientInterceptor, TelemetryServerInterceptor
    from meshkit.observability._logging import BufferedLineWriter, _AccessWriter, _render_lines

    writer = BufferedLineWriter(io.StringIO(), flush_interval_s=30)
    monkeypatch.setattr(_AccessLog, "logger", _AccessWriter(writer, 20))
    registry = CollectorRegistry()
    opts = TelemetryOptions(registry=registry, tracing=False)
    icpt: TelemetryServerInterceptor | TelemetryClientInterceptor
    answer: Callable[[], Awaitable[Any]]
    if side == "server":
        icpt = TelemetryServerInterceptor("echo", opts)

        async def unary(request: bytes, context: Any) -> bytes:
            return request

        handler = icpt.resolve("/meshkit.test.Echo/Unary",
                               grpc.unary_unary_rpc_method_handler(unary))
        assert handler is not None and handler.unary_unary is not None
        answer, hops = functools.partial(handler.unary_unary, b"hi", _ServedContext()), 1
    else:
        client = icpt = TelemetryClientInterceptor(opts)

        async def proceed(details: Any, request: Any) -> Any:
            return request

        answer = functools.partial(client.intercept_unary, _client_call_details(), b"hi",
                                   proceed)
        hops = 2
    loop = asyncio.get_running_loop()
    for _ in range(3):  # the loop settles (nothing of the fixtures' left ready)
        await asyncio.sleep(0)
    if busy:
        loop.call_soon(lambda: None)
    assert await answer() == b"hi"
    handled = registry.get_sample_value(
        f"grpc_{side}_handled_total", {"grpc_service": "meshkit.test.Echo",
                                       "grpc_method": "Unary", "grpc_type": "unary",
                                       "grpc_code": "OK"})
    assert handled == 1  # before the answer, always
    # a loop that does not show its ready queue (uvloop's) is not taken for idle (a
    # server's count of calls could say its call is alone; nothing counts them here)
    deferred = side == "server" and not busy and hasattr(loop, "_ready")
    for _ in range(hops):  # not before the last hop
        assert len(writer._buf) == (0 if deferred else 1)
        assert icpt._deferred == (1 if deferred else 0)
        await asyncio.sleep(0)
    assert len(writer._buf) == 1 and icpt._deferred == 0 and icpt._in_flight == 0
    line = json.loads(_render_lines(writer._buf)[0])
    assert line["side"] == side and line["code"] == "OK"


@pytest.mark.parametrize("busy", [False, True])
async def test_a_server_ends_its_span_after_the_answer_only_on_an_idle_loop(
        busy: bool, tracing: Tracing) -> None:
    """A server ends a recorded span after its answer went back to grpc (the loop's next
    turn) only while nothing else is ready on the loop, as it captures a JSON line: on a
    busy loop, a server under load, the deferral would only add a callback per call, so
    the span ends before the answer."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryServerInterceptor

    icpt = TelemetryServerInterceptor("echo", TelemetryOptions(
        registry=CollectorRegistry(), tracer_provider=tracing.provider, access_log=False))

    async def unary(request: bytes, context: Any) -> bytes:
        return request

    handler = icpt.resolve("/meshkit.test.Echo/Unary",
                           grpc.unary_unary_rpc_method_handler(unary))
    assert handler is not None and handler.unary_unary is not None
    loop = asyncio.get_running_loop()
    for _ in range(3):  # the loop settles (nothing of the fixtures' left ready)
        await asyncio.sleep(0)
    if busy:
        loop.call_soon(lambda: None)
    assert await handler.unary_unary(b"hi", _ServedContext()) == b"hi"
    # uvloop does not show its ready queue: inline there (nothing counts the calls here)
    deferred = not busy and hasattr(loop, "_ready")
    assert len(tracing.spans()) == (0 if deferred else 1)
    assert icpt._deferred == (1 if deferred else 0)
    await asyncio.sleep(0)
    (span,) = tracing.spans()
    assert span.kind is SpanKind.SERVER and icpt._deferred == 0 and icpt._in_flight == 0


@pytest.mark.parametrize(("calls", "deferred"), [(None, False), (1, True), (2, False)])
def test_server_on_uvloop_defers_json_capture_only_when_its_call_is_alone(
        calls: int | None, deferred: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop does not show its ready queue: a server there captures a JSON access record
    after the answer when the finishing call is the server's only one (``server_calls``,
    the request gate's count: 1), inline while other calls hold slots (2) or when nothing
    counts them (``None``)."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryServerInterceptor
    from meshkit.observability._logging import BufferedLineWriter, _AccessWriter
    from tests.support.skips import require_uvloop

    require_uvloop()
    import uvloop

    writer = BufferedLineWriter(io.StringIO(), flush_interval_s=30)
    monkeypatch.setattr(_AccessLog, "logger", _AccessWriter(writer, 20))
    icpt = TelemetryServerInterceptor("echo", TelemetryOptions(registry=CollectorRegistry(),
                                                               tracing=False))
    if calls is not None:
        icpt.server_calls = lambda: calls

    async def unary(request: bytes, context: Any) -> bytes:
        return request

    handler = icpt.resolve("/meshkit.test.Echo/Unary",
                           grpc.unary_unary_rpc_method_handler(unary))
    assert handler is not None and handler.unary_unary is not None

    async def main() -> tuple[int, int]:
        assert not hasattr(asyncio.get_running_loop(), "_ready")
        assert await handler.unary_unary(b"hi", _ServedContext()) == b"hi"
        at_answer = len(writer._buf), icpt._deferred
        await asyncio.sleep(0)
        assert len(writer._buf) == 1 and icpt._deferred == 0
        return at_answer

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == ((0, 1) if deferred else (1, 0))


async def test_json_access_lines_redact_credential_named_contextvars(
        registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON access line carries the structlog contextvars bound by the caller, with one
    named like a credential redacted, as every other line (configure_logging runs
    redact_secrets after merge_contextvars)."""
    from prometheus_client import CollectorRegistry

    import meshkit
    from meshkit.observability._logging import BufferedLineWriter, _AccessWriter
    from tests.support.echo import add_echo, method

    out = io.StringIO()
    monkeypatch.setattr(_AccessLog, "logger",
                        _AccessWriter(BufferedLineWriter(out, flush_interval_s=30), 20))
    opts = TelemetryOptions(registry=CollectorRegistry(), tracing=False)
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, telemetry=opts))
    await srv.start()
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=opts))
    try:
        await ch.wait_for_endpoints(1)
        with structlog.contextvars.bound_contextvars(request_id="r-1", api_token=SECRET):
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
        buf = _AccessLog.logger._writer._buf
        await until(lambda: len(buf) == 2, what="both access records")
    finally:
        await ch.close()
        await srv.drain()
    _AccessLog.logger._writer.flush()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    (client,) = [ln for ln in lines if ln.get("side") == "client"]
    assert client["request_id"] == "r-1" and client["api_token"] == "[REDACTED]"
    assert SECRET not in out.getvalue()


def test_console_access_lines_redact_credential_named_contextvars(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Under configure_logging's console format an access line carries the bound structlog
    contextvars, one named like a credential redacted."""
    from meshkit.observability._logging import write_access

    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)
    configure_logging("info", json=False, access_log_flush_interval_s=0)
    try:
        with structlog.contextvars.bound_contextvars(request_id="r-2", api_token=SECRET):
            write_access(False, lambda n: {"n": n}, (1,))
        flush_logs()
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert "rpc" in err and "r-2" in err and "[REDACTED]" in err, err
    assert SECRET not in err


def test_console_tracebacks_never_print_frame_locals(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """configure_logging's console format prints an exception's traceback without its
    frames' local variables. structlog's ConsoleRenderer formats exceptions with
    ``rich`` when it is installed (``show_locals=True``: a token in a local variable of
    any frame printed) or ``better_exceptions`` (which shows values too); this test stands
    in such a formatter for structlog's defaults, as an install of ``rich`` would."""
    import inspect

    def with_locals(sio: Any, exc_info: Any) -> None:
        tb = exc_info[2]
        while tb.tb_next is not None:
            tb = tb.tb_next
        sio.write(f"\nLOCALS {tb.tb_frame.f_locals!r}")

    init = structlog.dev.ConsoleRenderer.__init__
    params = [p.name for p in inspect.signature(init).parameters.values()
              if p.default is not inspect.Parameter.empty
              and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    defaults = list(init.__defaults__ or ())
    assert len(defaults) == len(params), (params, defaults)
    defaults[params.index("exception_formatter")] = with_locals
    monkeypatch.setattr(init, "__defaults__", tuple(defaults))
    monkeypatch.setattr(structlog.dev, "default_exception_formatter", with_locals)
    monkeypatch.setattr(structlog.dev, "default_monochrome_exception_formatter", with_locals)
    monkeypatch.setattr(_AccessLog, "logger", _AccessLog.logger)

    def fails(password: str) -> None:
        raise RuntimeError("the handler failed")

    configure_logging("info", json=False, access_log_flush_interval_s=0)
    try:
        try:
            fails(SECRET)
        except RuntimeError:
            structlog.get_logger("tests.console").exception("call failed")
        flush_logs()
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert SECRET not in err and "LOCALS" not in err, err
    assert "call failed" in err and "Traceback" in err and "the handler failed" in err, err


def _process(script: str, *args: str, extra_path: Path | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child Python process (it may configure structlog, fork or share
    a pipe, none of which may leak into the test session), ``OTEL_*`` and ``MESHKIT_*``
    variables removed and ``extra_path`` first on its ``PYTHONPATH``; it must succeed."""
    import os

    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHKIT_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [*([str(extra_path)] if extra_path is not None else []), str(root)])
    proc = subprocess.run([sys.executable, *(() if script.endswith(".py") else ("-c",)),
                           script, *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


# A stand-in for ``better_exceptions`` (structlog's ConsoleRenderer takes it, or ``rich``
# with show_locals=True, for its default exception formatter when it is installed): the
# traceback, then the values of the failing frame's local variables, as both show them.
_BETTER_EXCEPTIONS = '''
import traceback

def format_exception(etype, value, tb):
    out = traceback.format_exception(etype, value, tb)
    while tb.tb_next is not None:
        tb = tb.tb_next
    out.append(f"LOCALS {tb.tb_frame.f_locals!r}\\n")
    return out
'''

# A server whose handler raises while a token sits in a local variable and another is bound
# with structlog.contextvars; no configure_logging(): the server's "unhandled exception"
# error goes through the standard library bridge. sys.argv[1]: the registry's path.
_UNHANDLED_UNCONFIGURED = """
import asyncio, sys
import grpc
import structlog
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry

async def boom(request, context):
    api_token = "@SECRET@"  # e.g. the caller's bearer token, read by the handler
    structlog.contextvars.bind_contextvars(request_id="r-9", session_id="@SECRET@")
    raise RuntimeError("the database is down")

def add(_servicer, server):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.S", {"M": grpc.unary_unary_rpc_method_handler(boom)}),))

async def main():
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=1.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("t", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        insecure=True, drain_delay_s=0, grace_s=1.0, telemetry=None))
    await srv.start()
    async with meshkit.dial("t", registry=reg, options=meshkit.DialOptions(
            insecure=True, telemetry=None)) as ch:
        try:
            await ch.unary_unary("/t.S/M")(b"x", timeout=5)
        except grpc.aio.AioRpcError as e:
            assert e.code() is grpc.StatusCode.UNKNOWN, e
    await srv.drain()
    await reg.close()

asyncio.run(main())
""".replace("@SECRET@", SECRET)


def test_unconfigured_logging_never_prints_frame_locals_or_bound_secrets(
        tmp_path: Path) -> None:
    """With logging left unconfigured (the default: meshkit's lines go through the
    standard library, warnings and errors reach stderr), meshkit rendered its lines with
    structlog's default ConsoleRenderer, whose exception formatter is ``rich``'s
    (``show_locals=True``) or ``better_exceptions``' when either is installed: the
    server's ``unhandled exception`` error printed on stderr the value of every local of
    the failing handler frame (a token the handler held) and, unredacted, a
    credential-named value the handler bound with ``structlog.contextvars``; both are
    kept off configure_logging()'s lines. meshkit's lines in the quiet default now get
    the same plain traceback (no locals) and credential redaction; the application's
    own unconfigured structlog loggers keep structlog's defaults."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "better_exceptions.py").write_text(_BETTER_EXCEPTIONS)
    proc = _process(_UNHANDLED_UNCONFIGURED, str(tmp_path / "reg"), extra_path=stubs)
    err = proc.stderr
    assert proc.stdout == ""
    assert "unhandled exception" in err and "the database is down" in err, err
    assert "Traceback" in err and "r-9" in err and "[REDACTED]" in err, err
    assert "s3cr3t" not in err and "LOCALS" not in err, err


# configure_logging() twice, the first time at WARNING (e.g. a CLI before it parsed
# --verbose), with a meshkit module logger used in between.
_RECONFIGURE = """
import meshkit.server as server_mod
from meshkit.observability import configure_logging

configure_logging("WARNING", json=True)
server_mod._log.warning("first, at warning")          # meshkit.server's module logger
server_mod._log.info("dropped at WARNING, as asked")
configure_logging("INFO", json=True)
server_mod._log.info("second, at info")
"""


def test_configure_logging_again_applies_to_meshkit_loggers_already_used() -> None:
    """configure_logging() passed ``cache_logger_on_first_use=True``: each meshkit module
    logger (a structlog proxy) bound itself for good to the configuration in force when it
    first logged, so a second configure_logging() (a CLI raising the level after parsing
    ``--verbose``, a switch to the console format), or the application's own
    ``structlog.configure`` after it, did not reach meshkit's loggers already used: here
    meshkit.server's info line after ``configure_logging("INFO")`` was dropped. Loggers
    are no longer cached: the configuration set last applies to every line."""
    proc = _process(_RECONFIGURE)
    events = [ln["event"] for ln in _json_lines(proc.stderr)]
    assert events == ["first, at warning", "second, at info"], proc.stderr


# Writes 2,500 JSON access lines of about 330 bytes with configure_logging's defaults
# (batched every 0.2 s), yielding to the loop every 50. sys.argv[1]: a tag for its lines.
_ACCESS_WRITER = """
import asyncio, sys
from meshkit.observability._logging import configure_logging, write_access

configure_logging("info", json=True)
TAG = sys.argv[1]

def build(i, tag):
    return {"side": "server", "service": tag, "method": "/ecom.v1.OrderService/GetOrder",
            "grpc_type": "unary", "code": "OK", "duration_ms": 1.234, "i": i,
            "peer": "10.0.0.17:51234", "pad": "x" * 60}

async def main():
    for i in range(2500):
        write_access(False, build, (i, TAG))
        if i % 50 == 0:
            await asyncio.sleep(0)

asyncio.run(main())
"""


def test_access_lines_of_processes_sharing_stderr_never_interleave() -> None:
    """Two processes share one stderr pipe (pre-fork workers, a container's processes)
    and a reader that lags. The access log's BufferedLineWriter wrote a whole batch, up
    to 64 KiB, in one write(); a pipe write is atomic only up to PIPE_BUF (4096 bytes on
    Linux, POSIX write(2)), so the two processes' batches were spliced mid-line: 145-216
    of 5,000 lines reached the collector as broken JSON. A batch is now written in chunks
    cut at line ends, each at most PIPE_BUF bytes: every line arrives whole."""
    import os
    import time

    root = Path(__file__).parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHKIT_"))}
    r, w = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", _ACCESS_WRITER, tag], stderr=w,
                              stdout=subprocess.DEVNULL, cwd=root, env=env)
             for tag in ("svc-a", "svc-b")]
    os.close(w)
    data = bytearray()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            chunk = os.read(r, 1024)  # a collector a little slower than the writers
            if not chunk:
                break
            data += chunk
            time.sleep(0.0005)
    finally:
        os.close(r)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    lines = data.decode(errors="replace").splitlines()
    broken = [ln for ln in lines if not _json_lines(ln)]
    assert not broken, (f"{len(broken)} of {len(lines)} lines broken by interleaved "
                        f"writes, e.g. {broken[0][:200]!r}")
    assert len(lines) == 5000, len(lines)


@pytest.mark.parametrize("lines", [
    pytest.param(["a" * 300] * 40, id="ascii"),
    pytest.param(["b" * 4095, "c" * 4095, "d"], id="ascii-exactly-PIPE_BUF"),
    pytest.param(["e" * 10, "f" * 9000, "g" * 10, "h" * 5000], id="ascii-longer-lines-alone"),
    pytest.param(["é" * 150, "x" * 300, "€" * 1400, "y"] * 6, id="utf-8"),
    pytest.param(["z" * 100, "\ud800 lone surrogate", "z"], id="unencodable-alone"),
])
def test_a_batch_is_cut_at_line_ends_into_pipe_atomic_chunks(lines: list[str]) -> None:
    """The chunks of a batch hold its lines, in order and whole, each chunk at most
    PIPE_BUF bytes once encoded unless it is one line longer than that (or one that does
    not encode), and as few chunks as that allows."""
    from meshkit.observability._logging import PIPE_BUF, _atomic_chunks

    chunks = _atomic_chunks(lines, "utf-8", "strict")
    assert "".join(chunks) == "\n".join(lines) + "\n"
    assert all(c.endswith("\n") for c in chunks)
    for i, c in enumerate(chunks):
        try:
            size = len(c.encode())
        except UnicodeEncodeError:
            size = PIPE_BUF + 1
        assert size <= PIPE_BUF or c.count("\n") == 1, (i, size)
        if i + 1 < len(chunks):  # the next chunk's first line did not fit in this one
            first = chunks[i + 1].split("\n", 1)[0] + "\n"
            try:
                more = len(first.encode())
            except UnicodeEncodeError:
                more = PIPE_BUF + 1
            assert size + more > PIPE_BUF, i


# A multiprocessing worker (start method sys.argv[1]) that logs three access lines with
# ``worker_call`` 0..2 from the code WORKER_BODY puts in ``worker()``.
_MP_SCRIPT = """
import asyncio, multiprocessing, sys, threading
from meshkit.observability._logging import configure_logging, write_access

configure_logging("info", json=True)

def build(i):
    return {"side": "client", "target": "orderd", "method": "/m/M", "code": "OK",
            "worker_call": i}

WORKER_BODY

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    p = multiprocessing.Process(target=worker)
    p.start()
    p.join(30)
    assert p.exitcode == 0, p.exitcode
"""

# its calls leave the lines in the buffer when its target returns (its asyncio.run()
# ended before the 0.2 s timer)
_IN_THE_TARGET = """
def worker():
    async def main():
        for i in range(3):
            write_access(False, build, (i,))
    asyncio.run(main())
"""

# its server (an asyncio loop in a non-daemon thread, as a worker running its server
# beside other work does) still answers its last calls when the worker's target returns:
# multiprocessing's _bootstrap then runs threading._shutdown(), which calls the threading
# exit hooks *first* and only then joins the non-daemon threads
_IN_A_THREAD = """
def serve():
    async def main():
        await asyncio.sleep(0.5)  # the last calls end after the target returned
        for i in range(3):
            write_access(False, build, (i,))
    asyncio.run(main())

def worker():
    threading.Thread(target=serve).start()  # non-daemon: joined before the worker exits
"""


def _worker_calls(tmp_path: Path, body: str, start_method: str) -> tuple[list[int], str]:
    """The ``worker_call`` values of the access lines a worker running ``body`` wrote to
    stderr, and that stderr."""
    script = tmp_path / "mp_worker.py"  # multiprocessing needs a __main__ module file
    script.write_text(_MP_SCRIPT.replace("WORKER_BODY", body))
    proc = _process(str(script), start_method)
    lines = _json_lines(proc.stderr)
    return sorted(ln["worker_call"] for ln in lines if "worker_call" in ln), proc.stderr


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_access_lines_buffered_in_a_multiprocessing_worker_are_written_at_its_exit(
        tmp_path: Path, start_method: str) -> None:
    """Access lines are written at interpreter exit (``atexit``), but a ``multiprocessing``
    worker started by fork (Linux's default) or by the fork server ends with
    ``os._exit()``, which runs no ``atexit`` handler: the lines its last calls left in the
    buffer were lost, without a trace. The buffers are now also flushed at threading's
    shutdown, which such a worker runs before ``os._exit()`` (a spawned one exits
    normally)."""
    calls, stderr = _worker_calls(tmp_path, _IN_THE_TARGET, start_method)
    assert calls == [0, 1, 2], f"the worker's access lines were lost: {stderr!r}"


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_access_lines_of_a_workers_non_daemon_thread_are_written_at_its_exit(
        tmp_path: Path, start_method: str) -> None:
    """The threading exit hook that writes a fork / fork-server worker's buffered
    access lines (e98e668) runs *before* ``threading._shutdown()`` joins the non-daemon
    threads, and the worker's ``os._exit()`` follows the join with no other flush: every
    line a non-daemon thread's event loop logged while the worker waited for it (its
    last calls, its drain) was dropped (0 of 3). The hook now also makes every writer
    write through from then on: the 3 lines are written."""
    calls, stderr = _worker_calls(tmp_path, _IN_A_THREAD, start_method)
    assert calls == [0, 1, 2], f"the worker thread's access lines were lost: {stderr!r}"


# serve "echo", call it once (Unary) and drain, after the script's own logging set-up
_ONE_CALL_AFTER = """
import asyncio, io, logging, sys, tempfile
import structlog
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import configure_logging
from tests.support.echo import add_echo, method

async def one_call():
    reg = LocalRegistry(LocalOptions(path=tempfile.mkdtemp(), ttl_s=30.0,
                                     poll_interval_s=0.05))
    srv = meshkit.MeshServer("echo", [add_echo("e1", registered=True)], registry=reg,
                             options=meshkit.ServeOptions(insecure=True, instance_id="e1",
                                                          drain_delay_s=0, grace_s=1.0))
    await srv.start()
    try:
        async with meshkit.dial("echo", registry=reg,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
    finally:
        await srv.drain()
        await reg.close()

SETUP
asyncio.run(one_call())
print(sink.getvalue(), end="")
"""


@pytest.mark.parametrize("json_format", [True, False])
def test_access_log_follows_an_application_structlog_configure_after_configure_logging(
        json_format: bool) -> None:
    """An application (or a framework's entry point) calls ``configure_logging()`` and
    then configures structlog itself (its own sink, renderer and level). Every meshkit
    line followed the new configuration but the access log: its ``rpc`` lines were still
    written by ``configure_logging()``'s writer, in its format, on the stderr it captured,
    at its level (``_AccessLog.logger`` was only ever replaced by ``configure_logging()``).
    configure_logging's docstring says the configuration set last applies to every logger;
    the access lines now go where the application's configuration sends every other line
    (the JSON writer sees the new configuration when it writes its batch, the console
    one at its next line, and both then hand over to it)."""
    setup = f"""
configure_logging("INFO", json={json_format})
sink = io.StringIO()
structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    logger_factory=structlog.PrintLoggerFactory(sink),
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
"""
    proc = _process(_ONE_CALL_AFTER.replace("SETUP", setup))
    app = _json_lines(proc.stdout)
    assert any(e.get("event") == "serving" for e in app), proc.stdout  # the others follow
    assert "rpc" not in proc.stderr, f"access lines written by configure_logging()'s " \
        f"writer: {proc.stderr}"
    rpc = [e for e in app if e.get("event") == "rpc"]
    assert {e.get("side") for e in rpc} == {"server", "client"}, proc.stdout
    assert all(e["level"] == "info" and "timestamp" not in e for e in rpc), rpc


def test_access_log_stays_on_configure_logging_when_only_logger_caching_is_turned_on(
        ) -> None:
    """configure_logging's docstring invites ``structlog.configure(
    cache_logger_on_first_use=True)`` after it: that changes neither processors, sink nor
    level, so the access log keeps configure_logging()'s batched JSON writer."""
    setup = """
configure_logging("INFO", json=True)
structlog.configure(cache_logger_on_first_use=True)
sink = io.StringIO()
"""
    proc = _process(_ONE_CALL_AFTER.replace("SETUP", setup))
    rpc = [e for e in _json_lines(proc.stderr) if e.get("event") == "rpc"]
    assert {e.get("side") for e in rpc} == {"server", "client"}, proc.stderr
    assert all("timestamp" in e for e in rpc), rpc


_DERIVED_LOG_SCRIPT = r'''
import structlog
from meshkit.observability import configure_logging, flush_logs
from meshkit.discovery import ConsulOptions, EtcdOptions, LocalOptions

configure_logging(json=True)
log = structlog.get_logger("meshkit.discovery.consul")
log.info("consul index went backwards", grace_s=ConsulOptions().fault_grace_s)
log.info("etcd store replaced", grace_s=EtcdOptions().fault_grace_s)
opts = LocalOptions(path="/tmp/unused-derived-registry", ttl_s=3)
log.info("registry settings", heartbeat_interval_s=opts.heartbeat_interval_s,
         fault_grace_s=opts.fault_grace_s, ttl_s=opts.ttl_s)
flush_logs()
'''


def test_an_option_s_worked_out_default_is_a_number_in_json_log_lines() -> None:
    """An option left to its default worked out from another field (``fault_grace_s``,
    ``heartbeat_interval_s``: ``meshkit.discovery._types.Derived``, a ``float`` subclass)
    is logged as a JSON number. orjson (``meshkit[fast]``) encodes no float subclass, and
    the JSON renderer's fallback wrote it as a string (``"grace_s":"15.0"`` in the
    registries' own lines), which a log pipeline's numeric field mapping rejects (found by
    this session's review)."""
    proc = _process(_DERIVED_LOG_SCRIPT)
    fields = {}
    for line in proc.stderr.splitlines():
        event = json.loads(line)
        for key in ("grace_s", "heartbeat_interval_s", "fault_grace_s", "ttl_s"):
            if key in event:
                fields[f"{event['event']}:{key}"] = event[key]
    assert len(fields) == 5, (fields, proc.stderr)
    assert all(type(v) in (int, float) for v in fields.values()), fields
