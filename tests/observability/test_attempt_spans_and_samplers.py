"""Attempt spans and samplers through real dial()/serve() pairs: a call cancelled while an
attempt span's interceptor waits is cancelled at its server too, and a ParentBased subclass
with its own should_sample is asked, as the SDK asks it."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, SamplingResult
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.observability.conftest import Tracing
from tests.support.echo import method
from tests.support.wait import until

UNARY = "meshkit.test.Echo/Unary"
SLEEP = "meshkit.test.Echo/Sleep"


def _spans(tracing: Tracing, kind: SpanKind) -> list[Any]:
    return [s for s in tracing.spans() if s.name == UNARY and s.kind is kind]


async def test_with_attempt_spans_a_cancelled_call_is_cancelled_at_its_server(
    echo_servers: Any, registry: LocalRegistry, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """With ``attempt_spans=True`` a cancelled unary call (a caller's cancel, a hedge that
    lost) is cancelled at its server too, not only in grpc.aio's interceptor task: the
    server span says CANCELLED, as without attempt spans."""
    served: list[str] = []
    await echo_servers("e1", telemetry=telemetry, delay_s=4.0, served=served)  # Unary: 4 s
    opts = dataclasses.replace(telemetry, attempt_spans=True)
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=opts, retry=None))
    try:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        task = asyncio.ensure_future(unary(b"x", timeout=8))
        await until(lambda: served == ["Unary"], what="the handler running")
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        (attempt,) = await _wait_spans(tracing, SpanKind.CLIENT)
        assert attempt.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
        # the server must see the cancellation: its span ends CANCELLED, long before the
        # handler's 4 s are up (on the current code it ends after 4 s with OK)
        (server,) = await _wait_spans(tracing, SpanKind.SERVER, timeout_s=6.0)
        assert server.attributes["rpc.grpc.status_code"] == \
            grpc.StatusCode.CANCELLED.value[0], "the server ran the cancelled attempt to the end"
        assert (server.end_time - server.start_time) / 1e9 < 3.0
    finally:
        await ch.close()


async def _wait_spans(tracing: Tracing, kind: SpanKind, timeout_s: float = 5.0) -> list[Any]:
    await until(lambda: bool(_spans(tracing, kind)), timeout_s=timeout_s,
                what=f"a {kind.name} span")
    return _spans(tracing, kind)


class _DropEcho(ParentBased):
    """A ParentBased sampler (default delegates) whose should_sample drops every span of
    the echo service: a subclass that decides more than its parent class."""

    asked: list[str] = []

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None,
                      trace_state: Any = None) -> SamplingResult:
        _DropEcho.asked.append(name)
        if name.startswith("meshkit.test.Echo/"):
            return SamplingResult(Decision.DROP)
        return super().should_sample(parent_context, trace_id, name, kind, attributes, links,
                                      trace_state)


async def test_a_parent_based_sampler_subclass_is_asked(
    echo_servers: Any, registry: LocalRegistry
) -> None:
    """A ``ParentBased`` subclass with a ``should_sample`` of its own is asked, as the SDK
    asks it ("the configured sampler decides first"); the SDK's own ParentBased samplers
    keep meshkit's fast path."""
    _DropEcho.asked.clear()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=_DropEcho(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = TelemetryOptions(tracer_provider=provider, registry=CollectorRegistry())
    try:
        # the SDK's own path asks the sampler and drops the span
        with provider.get_tracer("test").start_as_current_span(
                "meshkit.test.Echo/Manual") as manual:
            assert not manual.is_recording()
        await echo_servers("e1", telemetry=tel)
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True, telemetry=tel))
        try:
            await ch.wait_for_endpoints(1)
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
        finally:
            await ch.close()
        await asyncio.sleep(0.3)  # a span's end may be deferred a loop turn or two
        assert "meshkit.test.Echo/Unary" in _DropEcho.asked, \
            "the configured sampler was never asked about the call's span"
        assert [s.name for s in exporter.get_finished_spans()] == []
    finally:
        provider.shutdown()


async def test_attempt_span_names_are_bounded_for_caller_chosen_method_names() -> None:
    """A generic proxy with ``attempt_spans=True`` calls whatever method its callers name:
    the attempt-span interceptor kept the split names of each method it saw, for ever
    (1,500 names, 1,500 entries). It now keeps at most as many as the channel keeps
    per-method plans; further names are split per attempt and their spans still name
    their own method."""
    from types import SimpleNamespace

    from meshkit.observability._client import (
        _MAX_ATTEMPT_NAMES,
        AttemptSpanInterceptor,
        _current_call,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = AttemptSpanInterceptor(TelemetryOptions(tracer_provider=provider))
    token = _current_call.set(SimpleNamespace(service="proxied", attempts=[]))
    try:
        for i in [*range(_MAX_ATTEMPT_NAMES + 500), 0]:
            details = grpc.aio.ClientCallDetails(f"/proxy.v1.Anything/Method{i}", None,
                                                 None, None, None)
            span, _ = interceptor._begin(details)
            assert span is not None
            span.end()
    finally:
        _current_call.reset(token)
    assert len(interceptor._names) <= _MAX_ATTEMPT_NAMES
    names = [s.name for s in exporter.get_finished_spans()]
    assert names[-2:] == [f"proxy.v1.Anything/Method{_MAX_ATTEMPT_NAMES + 499}",
                          "proxy.v1.Anything/Method0"]
    assert exporter.get_finished_spans()[-2].attributes["rpc.method"] == \
        f"Method{_MAX_ATTEMPT_NAMES + 499}"


def _memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.timeout(60)
async def test_hedged_attempt_spans_name_their_own_attempt_and_endpoint(
    echo_servers: Any, registry: LocalRegistry
) -> None:
    """Each attempt span names its own attempt (``meshkit.attempt``, 1-based) and the
    endpoint it went to (its server span is its child), also for hedged attempts
    launched in the same loop turn (a fresh channel's first call: every attempt waiting
    for a READY endpoint is launched when one is). The interceptor used to read the
    logical call's shared list when grpc.aio ran it, a turn later: every such attempt
    read the last one's number and endpoint."""
    client_provider, client_spans = _memory_provider()
    opts = TelemetryOptions(tracer_provider=client_provider, registry=CollectorRegistry(),
                            attempt_spans=True, access_log=False)
    server_spans: dict[str, InMemorySpanExporter] = {}
    for iid in ("e1", "e2", "e3"):
        provider, exporter = _memory_provider()  # one per server: which made which span
        server_spans[iid] = exporter
        await echo_servers(iid, telemetry=TelemetryOptions(
            tracer_provider=provider, registry=CollectorRegistry(), access_log=False))
    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=3,
                                             hedge_delay_s=0.001))
    problems: list[str] = []
    async with asyncio.timeout(40):
        for _round in range(4):  # a fresh channel each round: its first call
            client_spans.clear()
            for exporter in server_spans.values():
                exporter.clear()
            ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, telemetry=opts, retry=retry))
            try:
                await ch.unary_unary(method("Sleep"))(b"150", timeout=5)
                await until(lambda: len([
                    s for s in client_spans.get_finished_spans()
                    if s.kind is SpanKind.CLIENT]) >= 2, what="attempt spans")
                await asyncio.sleep(0.3)  # the other attempts' spans end too
            finally:
                await ch.close()
            attempts = {s.context.span_id: s for s in client_spans.get_finished_spans()
                        if s.kind is SpanKind.CLIENT and s.name == SLEEP}
            numbers = sorted(s.attributes["meshkit.attempt"] for s in attempts.values())
            if len(set(numbers)) != len(numbers) or not set(numbers) <= {1, 2, 3}:
                problems.append(f"attempt numbers {numbers} for {len(attempts)} attempts")
            for iid, exporter in server_spans.items():
                for s in exporter.get_finished_spans():
                    if s.kind is not SpanKind.SERVER or s.name != SLEEP:
                        continue
                    attempt = attempts.get(s.parent.span_id) if s.parent else None
                    if attempt is None:
                        problems.append(f"{iid}'s server span has no attempt span as parent")
                    elif attempt.attributes.get("meshkit.instance_id") != iid:
                        problems.append(
                            f"the attempt served by {iid} is exported as attempt "
                            f"{attempt.attributes['meshkit.attempt']} to "
                            f"{attempt.attributes.get('meshkit.instance_id')}")
    assert not problems, problems
