"""Baggage near W3C Baggage's 8,192 bytes against grpc core's default 8 KiB limit on a
request's metadata: meshkit's client cuts whole list-members from the end of the
``baggage`` header so that the request fits, instead of the server rejecting a share of
the calls with ``RESOURCE_EXHAUSTED`` ("received metadata size exceeds soft limit")."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from structlog.testing import capture_logs

import meshkit
from meshkit.observability import _tracing
from meshkit.observability._tracing import METADATA_BUDGET, inject_context
from tests.observability.conftest import ChainFactory
from tests.support.echo import method


def _with_baggage(members: int, size: int) -> Any:
    ctx = otel_context.get_current()
    for i in range(members):
        ctx = baggage.set_baggage(f"k{i}", "v" * size, ctx)
    return ctx


def _size(md: list[tuple[str, str | bytes]]) -> int:
    return 1024 + sum(len(k) + len(v) + 32 for k, v in md)


def test_large_baggage_is_cut_to_whole_members_within_the_budget() -> None:
    """64 members of 120 bytes beside a 2 KB application header: the header keeps the
    first members, each whole, and the metadata fits the budget; a warning tells it."""
    md: list[tuple[str, str | bytes]] = [("x-app", "a" * 2000)]
    with capture_logs() as logs:
        inject_context(md, _with_baggage(64, 120))
    assert _size(md) <= METADATA_BUDGET
    (value,) = [v for k, v in md if k == "baggage"]
    members = str(value).split(",")
    assert 10 < len(members) < 64
    assert members == [f"k{i}={'v' * 120}" for i in range(len(members))]
    assert [e for e in logs if e["log_level"] == "warning"
            and e.get("members") == 64 and e.get("members_sent") == len(members)], logs


def test_small_baggage_is_untouched() -> None:
    """Baggage that fits is sent as the propagator wrote it, without a warning."""
    md: list[tuple[str, str | bytes]] = []
    with capture_logs() as logs:
        inject_context(md, _with_baggage(3, 10))
    assert dict(md)["baggage"] == ",".join(f"k{i}={'v' * 10}" for i in range(3))
    assert not logs


def test_baggage_that_cannot_fit_at_all_is_not_sent() -> None:
    """Application metadata that leaves no room: no baggage header at all."""
    md: list[tuple[str, str | bytes]] = [("x-app", "a" * 7200)]
    inject_context(md, _with_baggage(5, 100))
    assert [k for k, _ in md] == ["x-app"]


async def test_calls_with_large_baggage_are_not_rejected(chain: ChainFactory) -> None:
    """30 calls carrying about 8 KB of baggage and a 2 KB application header all succeed
    (before: each was rejected RESOURCE_EXHAUSTED with a probability of about a third)."""
    c = await chain()
    ch = meshkit.dial("echo", registry=c.echo[0].registry, options=meshkit.DialOptions(
        insecure=True, telemetry=c.client.options.telemetry))
    token = otel_context.attach(_with_baggage(64, 120))
    failures: list[grpc.StatusCode] = []
    try:
        unary = ch.unary_unary(method("Unary"))
        for _ in range(30):
            try:
                assert await unary(b"x", timeout=5, metadata=(("x-app", "a" * 2000),)) \
                    == b"e1|x"
            except grpc.aio.AioRpcError as e:
                failures.append(e.code())
    finally:
        otel_context.detach(token)
        await ch.close()
    assert failures == []


def _sent_size(md: list[tuple[str, str | bytes]]) -> int:
    """The metadata's size as grpc core counts it on receipt: name, value as sent (a
    ``-bin`` value base64-encoded without padding) and 32 bytes per entry."""
    total = 1024
    for k, v in md:
        raw = v.encode() if isinstance(v, str) else v
        n = len(raw)
        total += len(k) + 32 + (n // 3 * 4 + (0, 2, 3)[n % 3] if k.endswith("-bin") else n)
    return total


def test_binary_values_are_counted_as_sent() -> None:
    """A ``-bin`` value counts base64-encoded, as grpc sends and counts it: 4,800 raw bytes
    (6,400 sent) beside 10 members of 100 bytes take the baggage down to fit."""
    md: list[tuple[str, str | bytes]] = [("x-blob-bin", b"\x01" * 4800)]
    inject_context(md, _with_baggage(10, 100))
    assert _sent_size(md) <= METADATA_BUDGET
    (value,) = [v for k, v in md if k == "baggage"]
    assert 0 < len(str(value).split(",")) < 10


def test_calls_without_baggage_skip_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A context without baggage writes no ``baggage`` header and never walks the
    metadata for one (the propagator's path, e.g. attempt spans, pays nothing for it)."""
    walked: list[object] = []
    monkeypatch.setattr(_tracing, "_fit_baggage", walked.append)
    md: list[tuple[str, str | bytes]] = [("x-app", "a")]
    inject_context(md, otel_context.Context())
    inject_context(md)
    assert walked == []
    inject_context(md, _with_baggage(1, 1))
    assert walked == [md]
