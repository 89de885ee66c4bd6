"""Credential headers that are named neither ``authorization`` nor ``*token*``: API keys
sent as ``x-auth-key`` (Cloudflare's global API key), ``ocp-apim-subscription-key`` (Azure
API Management), ``x-functions-key`` (Azure Functions), ``x-sentry-auth`` (Sentry's
``Sentry sentry_key=...``) and the like are credentials as much as ``x-api-key``: a handler
that logs its incoming metadata must not print them, and the access log must refuse to
include them (README: "credential-named fields are redacted")."""

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

# header names real services send credentials in, each with a value to look for
CREDENTIAL_HEADERS = {
    "x-auth-key": "cf-gl0bal-api-key",  # Cloudflare global API key
    "ocp-apim-subscription-key": "az-apim-subscr1ption",  # Azure API Management
    "x-functions-key": "az-funct1ons-key",  # Azure Functions host/function key
    "x-sentry-auth": "Sentry sentry_key=s3ntry",  # Sentry's auth header
    "x-auth": "x-auth-s3cr3t",
    "authentication": "Basic dXNlcjpwYXNz",
    "x-access-key": "acc3ss-key-value",
    "x-master-key": "mast3r-key-value",
    "signing_key": "s1gning-key-value",
    "passphrase": "pa55phrase-value",
}
# names that are not credentials, and stay loggable
NOT_CREDENTIALS = ("x-user", "traceparent", "idempotency-key", "x-request-id", "author",
                   "x-author", "routing-key", "cache-key", "x-partition-key", "method",
                   "peer", "grpc-trace-bin", "x-authority-zone")


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


def test_well_known_credential_headers_are_sensitive_and_others_are_not() -> None:
    """Each credential header name is sensitive, whatever its case; the others are not."""
    missed = [k for k in CREDENTIAL_HEADERS if not is_sensitive_key(k)]
    missed += [k.upper() for k in CREDENTIAL_HEADERS if not is_sensitive_key(k.upper())]
    assert missed == [], missed
    wrongly = [k for k in NOT_CREDENTIALS if is_sensitive_key(k)]
    assert wrongly == [], wrongly


def test_a_handler_logging_its_metadata_prints_no_credential_header(
        json_lines: io.StringIO) -> None:
    """The incoming metadata a careless handler logs (``grpc.aio.Metadata``, a list of
    pairs, a dict) shows none of the credential headers' values; the others stay."""
    pairs = [*CREDENTIAL_HEADERS.items(), ("x-request-id", "req-42")]
    log = structlog.get_logger("app")
    log.info("incoming", metadata=grpc.aio.Metadata(*pairs))
    log.info("incoming", metadata=list(pairs))
    log.info("incoming", headers=dict(pairs))
    out = json_lines.getvalue()
    assert out.count("req-42") == 3, out
    leaked = [v for v in CREDENTIAL_HEADERS.values() if v in out]
    assert leaked == [], out


@pytest.mark.parametrize("key", sorted(CREDENTIAL_HEADERS))
def test_log_metadata_refuses_the_credential_headers(key: str) -> None:
    """The access log's ``log_metadata`` refuses them, naming the key."""
    with pytest.raises(ConfigError, match=key):
        TelemetryOptions(log_metadata=(key,))
