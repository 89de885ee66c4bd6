"""More credential headers named ``*-key`` that the widened pattern (commit 0176540) still
let through: its list of "keys named for what they unlock" missed the S3 SSE-C key (the
customer's raw AES-256 key, base64, in ``x-amz-server-side-encryption-customer-key``:
whoever reads it decrypts the object), Datadog's ``dd-application-key`` (with
``dd-api-key``, full API access), New Relic's ``x-insert-key``, the ``x-app-key`` /
``x-application-key`` and ``x-admin-key`` many APIs authenticate with, and session keys
(a bearer credential like a session id). A handler logging its metadata printed them and
``TelemetryOptions(log_metadata=...)`` accepted them for the access log."""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import pytest
import structlog

from meshkit.errors import ConfigError
from meshkit.observability import (
    TelemetryOptions,
    add_trace_context,
    is_sensitive_key,
    redact_secrets,
)

CREDENTIAL_HEADERS = {
    "x-amz-server-side-encryption-customer-key": "c3NlLWMtYWVzLWtleQ==",
    "x-amz-copy-source-server-side-encryption-customer-key": "Y29weS1zc2UtYw==",
    "dd-application-key": "dd-app-k3y-value",
    "x-insert-key": "nr-1nsert-key",
    "x-app-key": "app-k3y-value",
    "x-application-key": "appl1cation-key",
    "x-admin-key": "adm1n-key-value",
    "x-session-key": "sess1on-key-value",
    "session_key": "sess1on-key-2",
}
# *-key names that are no credentials stay loggable (as the commit's own list)
NOT_CREDENTIALS = ("idempotency-key", "routing-key", "cache-key", "x-partition-key",
                   "x-sitemap-key", "x-happy-key-path", "x-public-key-id")


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


def test_the_key_headers_are_sensitive_whatever_the_case() -> None:
    """Each is sensitive as sent, upper-cased and with underscores; the others are not."""
    names = [*CREDENTIAL_HEADERS, *(k.upper() for k in CREDENTIAL_HEADERS),
             *(k.replace("-", "_") for k in CREDENTIAL_HEADERS)]
    assert [k for k in names if not is_sensitive_key(k)] == []
    assert [k for k in NOT_CREDENTIALS if is_sensitive_key(k)] == []


def test_a_handler_logging_its_metadata_prints_none_of_them(json_lines: io.StringIO) -> None:
    """``grpc.aio.Metadata`` and a dict of them logged: no value shows, the rest does."""
    pairs = [*CREDENTIAL_HEADERS.items(), ("x-request-id", "req-42")]
    log = structlog.get_logger("app")
    log.info("incoming", metadata=grpc.aio.Metadata(*pairs))
    log.info("incoming", headers=dict(pairs))
    out = json_lines.getvalue()
    assert out.count("req-42") == 2, out
    assert [v for v in CREDENTIAL_HEADERS.values() if v in out] == [], out


@pytest.mark.parametrize("key", sorted(CREDENTIAL_HEADERS))
def test_log_metadata_refuses_them(key: str) -> None:
    """The access log's ``log_metadata`` refuses each, quoting the key."""
    with pytest.raises(ConfigError, match=key):
        TelemetryOptions(log_metadata=(key,))
