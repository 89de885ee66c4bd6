"""Structured logs: access-log events per call, trace ids on handler logs, no secrets."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.trace import SpanKind

from meshkit.errors import ConfigError
from meshkit.observability import (
    TelemetryOptions,
    add_trace_context,
    configure_logging,
    is_sensitive_key,
    redact_secrets,
)
from tests.observability.conftest import FRONT, ChainFactory, Tracing
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
    lines = [json.loads(x) for x in json_lines.getvalue().splitlines()]
    served = next(ln for ln in lines if ln["event"] == "rpc" and ln["side"] == "server"
                  and ln["service"] == "front")
    assert served["md"] == {"x-user": "u1"}
    assert SECRET not in json_lines.getvalue()


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


def test_configure_logging_validates_level_and_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_logging refuses unknown levels and formats, quoting them."""
    with pytest.raises(ConfigError, match="'LOUD'"):
        configure_logging("loud")
    monkeypatch.setenv("MESHKIT_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="'xml'"):
        configure_logging("info")
    structlog.reset_defaults()
