"""The access log's ``md`` (``TelemetryOptions(log_metadata=...)``) redacts a credential
held in the value of a key the application opted in.

``log_metadata`` refuses credential-named keys, but a key named for something else can
carry one: ``x-callback: https://u:pw@h/`` (a webhook URL with its user info), a
``x-db: host=db password=s3cret`` or a forwarded ``Bearer <token>``. meshkit's own access
line does not pass through :func:`meshkit._log.redact_secrets` (its fields are
meshkit's), so ``logged_metadata`` wrote such a value raw, where every other log field
gets the URL, ``key=value`` and bearer redaction of :func:`meshkit._log.redact_text`.
"""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._metadata import logged_metadata
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, _logging
from meshkit.observability._logging import _AccessLog
from tests.support.echo import add_echo, method
from tests.support.raw_h2 import grpc_frame, request_headers, unary_call
from tests.support.wait import until

KEYS = ("x-callback",)

# value sent -> value logged
REDACTED_CASES = {
    "url": ("https://u:pw@h/hook", "https://[REDACTED]@h/hook"),
    "url-unencoded": ("postgresql://app:pa/ss@db/x", "postgresql://[REDACTED]@db/x"),
    "dsn": ("host=db user=app password=s3cret", "host=db user=app password=[REDACTED]"),
    "query": ("https://h/cb?token=abc&x=1", "https://h/cb?token=[REDACTED]&x=1"),
    "bearer": ("Bearer abcdefgh12345", "Bearer [REDACTED]"),
    "bytes-url": (b"https://u:pw@h/", "https://[REDACTED]@h/"),
}

# values logged as they are
PLAIN = {
    "request-id": "7c1e-44",
    "time": "12:30:45",
    "url-port": "https://h:8443/a/b",
    "email": "alice@example.com",
    "ipv6": "[::1]:8080",
    "pair": "tenant=t1",
}


@pytest.mark.parametrize("name", sorted(REDACTED_CASES), ids=sorted(REDACTED_CASES))
def test_a_credential_in_an_opted_in_value_is_redacted(name: str) -> None:
    sent, want = REDACTED_CASES[name]
    assert logged_metadata([("x-callback", sent)], KEYS) == {"x-callback": want}


def test_each_of_a_repeated_keys_values_is_redacted_and_escaped() -> None:
    md = logged_metadata([("x-callback", "https://u:pw@h/\u202e"), ("x-callback", "ok")], KEYS)
    assert md == {"x-callback": ["https://[REDACTED]@h/\\u202e", "ok"]}


@pytest.mark.parametrize("name", sorted(PLAIN), ids=sorted(PLAIN))
def test_ordinary_values_are_left_as_they_are(name: str) -> None:
    value = PLAIN[name]
    md = logged_metadata([("x-callback", value)], KEYS)
    assert md == {"x-callback": value}
    assert md["x-callback"] is value  # the same object: nothing rebuilt


@pytest.mark.timeout(60)
async def test_the_servers_access_line_shows_the_callback_url_redacted(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: a caller sends ``x-callback: https://u:pw@h/``; the server's access line
    (JSON through the standard library) shows the user info redacted."""
    monkeypatch.setattr(_AccessLog, "logger", None)
    monkeypatch.setattr(_logging, "_structlog_configured", lambda: False)
    caplog.set_level(logging.INFO, logger="meshkit.access")
    srv = meshkit.MeshServer(
        "echo",
        [add_echo("e1")],
        registry=registry,
        options=meshkit.ServeOptions(
            insecure=True,
            drain_delay_s=0,
            grace_s=1.0,
            telemetry=TelemetryOptions(
                tracing=False, registry=CollectorRegistry(), log_metadata=KEYS
            ),
        ),
    )
    await srv.start()
    try:
        reply = await unary_call(
            srv.port,
            request_headers(method("Unary"), [("x-callback", "https://u:pw@h/")]),
            grpc_frame(b"x"),
        )
        assert reply.get("grpc-status") == "0"

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "meshkit.access"]

        await until(lambda: len(lines()) == 1, timeout_s=10.0)
        line = lines()[0]
        assert "pw@" not in line, line
        assert json.loads(line)["md"] == {"x-callback": "https://[REDACTED]@h/"}
    finally:
        await srv.drain()
