"""Traces across a two-hop chain: one trace, semconv attributes, retries under one span."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, StatusCode

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, render_trace
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.observability.conftest import FRONT, ChainFactory, Tracing
from tests.support.echo import add_echo, method
from tests.support.wait import until

FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)


def by_name(spans: list[Any], name: str, kind: SpanKind) -> list[Any]:
    """Spans called ``name`` of ``kind``."""
    return [s for s in spans if s.name == name and s.kind is kind]


async def test_two_hop_call_is_one_trace_with_semconv_attributes(
    chain: ChainFactory, tracing: Tracing
) -> None:
    """client -> front -> echo yields one trace: client span, front server span, its client
    span to echo, echo's server span, each the parent of the next, with RPC semconv."""
    c = await chain()
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    assert await relay(b"hi", timeout=5) == b"e1|hi"
    await until(lambda: len(tracing.spans()) >= 4, what="4 spans")
    spans = tracing.spans()
    (c1,) = by_name(spans, f"{FRONT}/Relay", SpanKind.CLIENT)
    (s1,) = by_name(spans, f"{FRONT}/Relay", SpanKind.SERVER)
    (c2,) = by_name(spans, "meshkit.test.Echo/Unary", SpanKind.CLIENT)
    (s2,) = by_name(spans, "meshkit.test.Echo/Unary", SpanKind.SERVER)
    assert len({s.context.trace_id for s in (c1, s1, c2, s2)}) == 1
    assert c1.parent is None
    assert s1.parent.span_id == c1.context.span_id
    assert c2.parent.span_id == s1.context.span_id
    assert s2.parent.span_id == c2.context.span_id
    for s in (c1, s1, c2, s2):
        assert s.attributes["rpc.system"] == "grpc"
        assert s.attributes["rpc.grpc.status_code"] == 0
        assert s.status.status_code is not StatusCode.ERROR
    assert c2.attributes["rpc.service"] == "meshkit.test.Echo"
    assert c2.attributes["rpc.method"] == "Unary"
    assert c2.attributes["server.address"] == "echo"
    assert c2.attributes["network.peer.address"] == "127.0.0.1"
    assert c2.attributes["network.peer.port"] == c.echo[0].port
    assert c2.attributes["meshkit.attempts"] == 1
    assert c2.attributes["meshkit.instance_id"] == "e1"
    assert s2.attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(s2.attributes["network.peer.port"], int)
    tree = render_trace(spans)
    print(tree)
    assert tree.splitlines()[0].startswith(f"{FRONT}/Relay  client")
    assert "└─ meshkit.test.Echo/Unary  server" in tree


async def test_baggage_and_caller_trace_flow_through_metadata(
    chain: ChainFactory, tracing: Tracing
) -> None:
    """A caller's current span and baggage reach the far server through the metadata."""
    c = await chain()
    tracer = tracing.provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as root:
        token = otel_context.attach(baggage.set_baggage("tenant", "t-42"))
        try:
            await c.client.unary_unary(f"/{FRONT}/Relay")(b"x", timeout=5)
        finally:
            otel_context.detach(token)
    await until(lambda: len(tracing.spans()) >= 5, what="5 spans")
    spans = tracing.spans()
    assert {s.context.trace_id for s in spans} == {root.get_span_context().trace_id}
    (c1,) = by_name(spans, f"{FRONT}/Relay", SpanKind.CLIENT)
    assert c1.parent.span_id == root.get_span_context().span_id
    # with baggage set the global propagator writes the headers: with the client span
    (s1,) = by_name(spans, f"{FRONT}/Relay", SpanKind.SERVER)
    assert s1.parent.span_id == c1.context.span_id


async def test_retries_are_attempt_events_under_one_logical_span(
    chain: ChainFactory, tracing: Tracing
) -> None:
    """A call retried on two endpoints makes one client span with two attempt events, and
    both server spans are its children."""
    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST))
    c = await chain(echoes=2, retry=retry)
    import meshkit

    ch = meshkit.dial(
        "echo",
        registry=c.echo[0].registry,
        options=meshkit.DialOptions(
            insecure=True, telemetry=c.client.options.telemetry, retry=retry
        ),
    )
    try:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await ch.close()
    await until(
        lambda: len(by_name(tracing.spans(), "meshkit.test.Echo/Fail", SpanKind.SERVER)) == 2,
        what="2 server spans",
    )
    spans = tracing.spans()
    (logical,) = by_name(spans, "meshkit.test.Echo/Fail", SpanKind.CLIENT)
    servers = by_name(spans, "meshkit.test.Echo/Fail", SpanKind.SERVER)
    assert logical.attributes["meshkit.attempts"] == 2
    assert logical.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert logical.status.status_code is StatusCode.ERROR
    events = [e for e in logical.events if e.name == "attempt"]
    assert [e.attributes["meshkit.attempt"] for e in events] == [1, 2]
    assert {e.attributes["meshkit.instance_id"] for e in events} == {"e1", "e2"}
    for s in servers:
        assert s.parent.span_id == logical.context.span_id
        assert s.context.trace_id == logical.context.trace_id
        assert s.status.status_code is StatusCode.ERROR  # UNAVAILABLE is a server error


async def test_retried_stream_is_one_logical_span_with_its_final_status(
    chain: ChainFactory, tracing: Tracing
) -> None:
    """A server stream that failed before its first message on one endpoint and was opened
    again on the other makes one client span: two attempt events, status OK."""
    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST))
    c = await chain(echoes=2, retry=retry)
    import meshkit
    from meshkit.balancer import RoundRobin

    ch = meshkit.dial(
        "echo",
        registry=c.echo[0].registry,
        options=meshkit.DialOptions(insecure=True, telemetry=c.client.options.telemetry,
                                    retry=retry, balancer=RoundRobin, outlier=None),
    )
    try:
        await ch.wait_for_endpoints(2)
        stream = ch.unary_stream(method("FailStream"))
        for _ in range(2):  # round robin: one of the two starts on e1
            got = [r async for r in stream(b"UNAVAILABLE:0@e1", timeout=5)]
            assert got == [b"e2|0", b"e2|1", b"e2|2"]
    finally:
        await ch.close()
    name = "meshkit.test.Echo/FailStream"
    await until(lambda: len(by_name(tracing.spans(), name, SpanKind.CLIENT)) == 2,
                what="2 client spans")
    logical = by_name(tracing.spans(), name, SpanKind.CLIENT)
    assert sorted(s.attributes["meshkit.attempts"] for s in logical) in ([1, 2], [2, 2])
    for span in logical:
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.status.status_code is not StatusCode.ERROR
        assert span.attributes["meshkit.instance_id"] == "e2"
        events = [e for e in span.events if e.name == "attempt"]
        if span.attributes["meshkit.attempts"] == 2:
            assert [e.attributes["meshkit.instance_id"] for e in events] == ["e1", "e2"]


async def test_attempt_spans_option_makes_a_client_span_per_attempt(
    chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """With attempt_spans, the logical span is INTERNAL with one CLIENT child per attempt,
    each naming its endpoint and the dialed service (``server.address``: Required on RPC
    client spans, OpenTelemetry RPC semconv) and parenting that attempt's server span.
    ``DialOptions(telemetry=TelemetryOptions(attempt_spans=True))`` is the whole set-up
    (``dial()`` installs the attempt interceptor; the docstring said to add
    ``attempt_interceptors()`` too, which made two CLIENT spans per attempt and is now
    refused)."""
    import dataclasses

    import meshkit

    opts = dataclasses.replace(telemetry, attempt_spans=True)
    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST))
    c = await chain(echoes=2, telemetry_opts=opts, retry=retry)
    ch = meshkit.dial(
        "echo",
        registry=c.echo[0].registry,
        options=meshkit.DialOptions(insecure=True, telemetry=opts, retry=retry),
    )
    try:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=5)
    finally:
        await ch.close()
    await until(
        lambda: len(by_name(tracing.spans(), "meshkit.test.Echo/Fail", SpanKind.SERVER)) == 2,
        what="2 server spans",
    )
    spans = tracing.spans()
    (logical,) = by_name(spans, "meshkit.test.Echo/Fail", SpanKind.INTERNAL)
    attempts = by_name(spans, "meshkit.test.Echo/Fail", SpanKind.CLIENT)
    assert sorted(a.attributes["meshkit.attempt"] for a in attempts) == [1, 2]
    assert {a.attributes["meshkit.instance_id"] for a in attempts} == {"e1", "e2"}
    assert {a.attributes.get("server.address") for a in attempts} == {"echo"}
    attempt_ids = {a.context.span_id for a in attempts}
    for a in attempts:
        assert a.parent.span_id == logical.context.span_id
        assert a.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    for s in by_name(spans, "meshkit.test.Echo/Fail", SpanKind.SERVER):
        assert s.parent.span_id in attempt_ids


async def test_attempt_spans_cover_streaming_calls_too(
    chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """``AttemptSpanInterceptor`` is one object of all four interceptor kinds, which
    grpc.aio takes as unary-unary only (it files an interceptor under its first kind);
    the channel installs it for every kind, so a server stream, a client stream and a bidi
    stream each get their CLIENT attempt span, parent of the server's span. (Installed
    by hand, as ``telemetry=None`` allows.)"""
    import dataclasses

    import meshkit
    from meshkit.observability import attempt_interceptors, client_interceptors

    opts = dataclasses.replace(telemetry, attempt_spans=True)
    c = await chain(echoes=1, telemetry_opts=opts)
    ch = meshkit.dial("echo", registry=c.echo[0].registry, options=meshkit.DialOptions(
        insecure=True, telemetry=None, interceptors=client_interceptors(opts),
        attempt_interceptors=attempt_interceptors(opts), retry=None))
    try:
        await ch.wait_for_endpoints(1)
        assert [m async for m in ch.unary_stream(method("ServerStream"))(b"2", timeout=5)] \
            == [b"e1|0", b"e1|1"]
        assert await ch.stream_unary(method("ClientStream"))(iter([b"a"]), timeout=5) \
            == b"e1|a"
        assert [m async for m in ch.stream_stream(method("Bidi"))(iter([b"b"]), timeout=5)] \
            == [b"e1|b"]
    finally:
        await ch.close()
    names = [f"meshkit.test.Echo/{m}" for m in ("ServerStream", "ClientStream", "Bidi")]
    await until(lambda: all(by_name(tracing.spans(), n, SpanKind.SERVER) for n in names),
                what="the server spans")
    spans = tracing.spans()
    for name in names:
        (logical,) = by_name(spans, name, SpanKind.INTERNAL)
        (attempt,) = by_name(spans, name, SpanKind.CLIENT)
        (server,) = by_name(spans, name, SpanKind.SERVER)
        assert attempt.parent.span_id == logical.context.span_id, name
        assert server.parent.span_id == attempt.context.span_id, name
        assert attempt.attributes["meshkit.attempt"] == 1
        assert attempt.attributes.get("server.address") == "echo", name


async def test_a_hedged_calls_span_names_the_endpoint_that_answered(
    echo_servers: Any, registry: LocalRegistry, tracing: Tracing
) -> None:
    """A hedged call answered by its first attempt (the hedge, sent 0.5 s later to the
    other instance, is cancelled) was recorded as answered by the hedge: the client span's
    ``network.peer.*`` and ``meshkit.instance_id`` were those of ``details.attempts[-1]``,
    the endpoint picked last, whose own server span says CANCELLED. Now they name the
    endpoint of the attempt that answered."""
    from prometheus_client import CollectorRegistry

    import meshkit

    opts = TelemetryOptions(tracer_provider=tracing.provider, registry=CollectorRegistry(),
                            access_log=False)
    ports = {}
    for iid in ("e1", "e2"):
        ports[iid] = (await echo_servers(iid, telemetry=opts)).port
    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2,
                                             hedge_delay_s=0.5))
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=opts, retry=retry))
    name = "meshkit.test.Echo/Sleep"
    try:
        async with asyncio.timeout(10):
            await ch.wait_for_endpoints(2)
            sleep: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
                method("Sleep"))
            answer = await sleep(b"1000", timeout=5)
            await until(lambda: bool(by_name(tracing.spans(), name, SpanKind.CLIENT)),
                        what="the client span")
    finally:
        await ch.close()
    winner = answer.decode()
    (client,) = by_name(tracing.spans(), name, SpanKind.CLIENT)
    assert client.attributes["meshkit.attempts"] == 2  # it was hedged
    assert (client.attributes["meshkit.instance_id"], client.attributes["network.peer.port"]
            ) == (winner, ports[winner])
    assert [e.attributes["meshkit.instance_id"] for e in client.events
            if e.name == "attempt"] == [winner, ({"e1", "e2"} - {winner}).pop()]


async def test_a_shared_client_interceptor_names_each_channels_server_address(
    echo_servers: Any, registry: Any, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """One ``client_interceptors(opts)`` tuple in the ``DialOptions.interceptors`` of two
    channels gives each call's CLIENT span the ``server.address`` of the service its
    channel dialed (semconv: "RPC server host name", Required; README: the dialed mesh
    service), not the first channel's."""
    import meshkit
    from meshkit.observability import client_interceptors

    await echo_servers("e1", telemetry=telemetry)
    await echo_servers("o1", service="other", telemetry=telemetry)
    dial = meshkit.DialOptions(insecure=True, telemetry=None,
                               interceptors=client_interceptors(telemetry))
    echo = meshkit.dial("echo", registry=registry, options=dial)
    other = meshkit.dial("other", registry=registry, options=dial)
    try:
        for ch in (echo, other, echo):
            await ch.wait_for_endpoints(1)
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
    finally:
        await echo.close()
        await other.close()
    await until(lambda: len([s for s in tracing.spans() if s.kind is SpanKind.CLIENT]) == 3,
                what="3 client spans")
    clients = sorted((s for s in tracing.spans() if s.kind is SpanKind.CLIENT),
                     key=lambda s: s.start_time)
    assert [(s.attributes["meshkit.instance_id"], s.attributes.get("server.address"))
            for s in clients] == [("e1", "echo"), ("o1", "other"), ("e1", "echo")]


async def test_streaming_calls_are_traced_through_the_chain(
    chain: ChainFactory, tracing: Tracing
) -> None:
    """A server-streaming relay produces the same four-span trace, ended when the streams
    end."""
    c = await chain()
    got = [r async for r in c.client.unary_stream(f"/{FRONT}/RelayStream")(b"3", timeout=5)]
    assert got == [b"e1|0", b"e1|1", b"e1|2"]
    await until(lambda: len(tracing.spans()) >= 4, what="4 spans")
    spans = tracing.spans()
    (c1,) = by_name(spans, f"{FRONT}/RelayStream", SpanKind.CLIENT)
    (s2,) = by_name(spans, "meshkit.test.Echo/ServerStream", SpanKind.SERVER)
    assert s2.context.trace_id == c1.context.trace_id
    assert c1.attributes["rpc.grpc.status_code"] == 0


async def test_otel_implementation_also_propagates(
    chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """The opentelemetry-instrumentation-grpc choice yields one connected trace too."""
    import meshkit
    from meshkit.observability import (
        attempt_interceptors,
        client_interceptors,
        server_interceptors,
    )
    from tests.support.echo import add_echo

    reg = (await chain()).echo[0].registry
    srv = meshkit.MeshServer(
        "otel-echo",
        [add_echo("o1")],
        registry=reg,
        options=meshkit.ServeOptions(
            insecure=True,
            drain_delay_s=0.0,
            grace_s=1.0,
            telemetry=None,
            interceptors=server_interceptors("otel-echo", telemetry, implementation="otel"),
        ),
    )
    await srv.start()
    ch = meshkit.dial(
        "otel-echo",
        registry=reg,
        options=meshkit.DialOptions(
            insecure=True,
            telemetry=None,
            interceptors=client_interceptors(telemetry, implementation="otel"),
            attempt_interceptors=attempt_interceptors(telemetry, implementation="otel"),
        ),
    )
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary(method("Unary"))(b"o", timeout=5) == b"o1|o"
    finally:
        await ch.close()
        await srv.drain()
    await until(
        lambda: len([s for s in tracing.spans() if "Echo/Unary" in s.name]) >= 2, what="otel spans"
    )
    spans = [s for s in tracing.spans() if "Echo/Unary" in s.name]
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    assert server.parent.span_id == client.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_peer_identity_and_rate_limit_become_attributes(
    chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """A known caller identity lands on the server span; a RESOURCE_EXHAUSTED answer marks
    both sides of that hop rate-limited (and is no server-side error)."""
    import dataclasses

    from meshkit.resilience import RateLimitOptions

    opts = dataclasses.replace(telemetry, peer_identity=lambda: "spiffe://mesh/svc/front")
    limits = RateLimitOptions(rules={method("Unary"): "1/minute"}, strategy="fixed-window")
    c = await chain(telemetry_opts=opts, echo_rate_limit=limits)
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    await relay(b"1", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await relay(b"2", timeout=5)
    # front's handler let the echo server's refusal escape: a downstream refusal is
    # answered RESOURCE_EXHAUSTED with meshkit-downstream-status, not UNKNOWN (e927beae)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    await until(lambda: len(tracing.spans()) >= 8, what="8 spans")
    servers = by_name(tracing.spans(), "meshkit.test.Echo/Unary", SpanKind.SERVER)
    assert {s.attributes["meshkit.peer.identity"] for s in servers} == {"spiffe://mesh/svc/front"}
    limited = [s for s in tracing.spans() if s.attributes.get("meshkit.rate_limited")]
    assert {(s.name, s.kind) for s in limited} >= {
        ("meshkit.test.Echo/Unary", SpanKind.SERVER),
        ("meshkit.test.Echo/Unary", SpanKind.CLIENT),
    }
    (server_limited,) = [s for s in limited if s.kind is SpanKind.SERVER]
    assert server_limited.status.status_code is not StatusCode.ERROR  # caller's problem


async def test_span_and_log_complete_after_the_response_with_the_calls_end_time(
    chain: ChainFactory, tracing: Tracing
) -> None:
    """By default the client span is ended two loop turns after the caller got its answer
    (off its latency path: a call the caller starts at once is sent before it), stamped
    with the time the call ended; with complete_after_response_max_in_flight=0 it is
    ended before the call returns."""
    import asyncio
    import time

    c = await chain()
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    # warm up: the first call also waits for endpoints
    assert await relay(b"w", timeout=5) == b"e1|w"
    await until(lambda: len(tracing.spans()) >= 4, what="warm-up spans")
    tracing.exporter.clear()
    assert await relay(b"x", timeout=5) == b"e1|x"
    returned_ns = time.time_ns()
    outer = [s for s in tracing.spans() if s.name == f"{FRONT}/Relay"]
    assert [s.kind for s in outer] == [SpanKind.SERVER]  # the caller's: two turns later
    await asyncio.sleep(0)
    assert [s.kind for s in tracing.spans() if s.name == f"{FRONT}/Relay"] == [
        SpanKind.SERVER]
    await asyncio.sleep(0)
    (client,) = by_name(tracing.spans(), f"{FRONT}/Relay", SpanKind.CLIENT)
    (server,) = by_name(tracing.spans(), f"{FRONT}/Relay", SpanKind.SERVER)
    assert client.end_time <= returned_ns
    assert server.start_time >= client.start_time and server.end_time <= client.end_time


async def test_span_completes_before_return_when_asked(
    chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions
) -> None:
    """complete_after_response_max_in_flight=0 ends the client span before the call
    returns."""
    import dataclasses

    c = await chain(telemetry_opts=dataclasses.replace(telemetry,
                                                       complete_after_response_max_in_flight=0))
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    assert await relay(b"x", timeout=5) == b"e1|x"
    assert len(by_name(tracing.spans(), f"{FRONT}/Relay", SpanKind.CLIENT)) == 1


@pytest.mark.parametrize("after", [True, False])
async def test_a_failing_span_processor_never_fails_the_call(
    chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions, after: bool
) -> None:
    """An exception while ending a span (here a span processor that raises) is logged and
    swallowed on both sides; the call still answers."""
    import dataclasses

    from opentelemetry.sdk.trace import SpanProcessor

    class Broken(SpanProcessor):
        def on_end(self, span: Any) -> None:
            raise RuntimeError("exporter bug")

    tracing.provider.add_span_processor(Broken())
    c = await chain(telemetry_opts=dataclasses.replace(
        telemetry, complete_after_response_max_in_flight=4 if after else 0))
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    assert await relay(b"hi", timeout=5) == b"e1|hi"
    assert await relay(b"again", timeout=5) == b"e1|again"


async def test_completion_is_inline_above_the_in_flight_limit(tracing: Tracing) -> None:
    """With more calls in flight than complete_after_response_max_in_flight the span is
    ended before the call returns (a saturated loop gains nothing from deferring); at or
    under it, in the next turn. The in-flight count returns to 0, failures included."""
    import asyncio
    import contextlib

    from meshkit.interceptors import CallKind, ClientCallDetails
    from meshkit.observability import TelemetryClientInterceptor

    icpt = TelemetryClientInterceptor(TelemetryOptions(
        tracer_provider=tracing.provider, metrics=False, access_log=False,
        complete_after_response_max_in_flight=1))
    gates = [asyncio.Event() for _ in range(3)]

    def details() -> ClientCallDetails:
        return ClientCallDetails(service="echo", method=method("Unary"),
                                 kind=CallKind.UNARY_UNARY, timeout_s=5, metadata=())

    async def call(i: int) -> int:
        async def proceed(d: ClientCallDetails, request: Any) -> Any:
            await gates[i].wait()
            if i == 2:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), "down")
            return request

        with contextlib.suppress(grpc.aio.AioRpcError):
            await icpt.intercept_unary(details(), i, proceed)
        return len(tracing.spans())  # spans ended by the time this call returned

    tasks = [asyncio.create_task(call(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert icpt._in_flight == 3
    gates[0].set()
    assert await tasks[0] == 1  # 3 in flight > 1: ended before returning
    gates[2].set()
    assert await tasks[2] == 2  # 2 in flight > 1: inline again (a failure)
    gates[1].set()
    assert await tasks[1] == 2  # alone (1 <= 1): deferred to the next turn
    await asyncio.sleep(0)
    assert len(tracing.spans()) == 3 and icpt._in_flight == 0


async def test_deferred_completions_count_against_the_limit(tracing: Tracing) -> None:
    """Calls that finish one after another in the same loop turn, each alone in flight
    (a server's instant handlers under load), defer only up to the limit counting the
    completions still waiting; the rest complete inline. All end two turns later."""
    import asyncio

    from meshkit.interceptors import CallKind, ClientCallDetails
    from meshkit.observability import TelemetryClientInterceptor

    icpt = TelemetryClientInterceptor(TelemetryOptions(
        tracer_provider=tracing.provider, metrics=False, access_log=False,
        complete_after_response_max_in_flight=2))

    async def proceed(d: ClientCallDetails, request: Any) -> Any:
        return request  # answers without giving the loop a turn

    ended = []
    for i in range(4):
        d = ClientCallDetails(service="echo", method=method("Unary"),
                              kind=CallKind.UNARY_UNARY, timeout_s=5, metadata=())
        assert await icpt.intercept_unary(d, i, proceed) == i
        ended.append(len(tracing.spans()))
    # 1st: 1 in flight + 0 waiting <= 2, deferred; 2nd: 1 + 1 <= 2, deferred;
    # 3rd and 4th: 1 + 2 > 2, ended before returning
    assert ended == [0, 0, 1, 2]
    await asyncio.sleep(0)
    assert len(tracing.spans()) == 2 and icpt._deferred == 2  # the first hop ran
    await asyncio.sleep(0)
    assert len(tracing.spans()) == 4 and icpt._deferred == 0 and icpt._in_flight == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_completion_limit_is_validated(bad: Any) -> None:
    """A negative or non-int complete_after_response_max_in_flight fails, quoted."""
    from meshkit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"got {bad!r}"):
        TelemetryOptions(complete_after_response_max_in_flight=bad)


_GLOBAL_PROVIDER_SCRIPT = """
import os, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from meshkit.observability._tracing import SpanStarter

starter = SpanStarter(None, SpanKind.SERVER)
first = starter.start("svc/M", None, None, {})
if sys.argv[1] == "later":
    assert first is None, first  # no provider, no parent: no trace context at all
    assert not starter.makes_root() and starter.nothing_to_carry()
    trace.set_tracer_provider(TracerProvider())
assert starter.makes_root() and not starter.nothing_to_carry()
span = starter.start("svc/M", None, None, {})
assert span is not None and span.is_recording(), span
assert type(span).__name__ == "LeanSdkSpan", type(span)
print("ok")
"""


@pytest.mark.parametrize("how", ["later", "env"])
def test_spans_follow_the_global_provider_also_one_set_later(how: str) -> None:
    """A telemetry option without ``tracer_provider`` follows the global provider: one
    installed after the first call (``set_tracer_provider``), and one the API loads by
    name from ``OTEL_PYTHON_TRACER_PROVIDER``. Each in a fresh process: the global
    provider can be set once."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if how == "env":
        env["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
    out = subprocess.run([sys.executable, "-c", _GLOBAL_PROVIDER_SCRIPT, how], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


async def test_ipv6_peer_is_the_bare_address_on_the_server_span_and_access_line(
    registry: Any, tracing: Tracing, monkeypatch: Any
) -> None:
    """A server on ``::1``: grpc core reports the caller as ``ipv6:%5B::1%5D:port``; the
    server span's ``network.peer.address`` is the address ``::1`` (semconv) and the access
    line's ``peer`` ``[::1]:port``, never the percent-encoded form."""
    import asyncio
    import io
    import json

    from prometheus_client import CollectorRegistry

    import meshkit
    from meshkit.observability._logging import BufferedLineWriter, _AccessLog, _AccessWriter
    from tests.support.echo import add_echo

    out = io.StringIO()
    monkeypatch.setattr(_AccessLog, "logger",
                        _AccessWriter(BufferedLineWriter(out, flush_interval_s=30), 20))
    opts = TelemetryOptions(tracer_provider=tracing.provider, registry=CollectorRegistry())
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, host="::1",
                                                          drain_delay_s=0.0, grace_s=1.0,
                                                          telemetry=opts))
    await srv.start()
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=opts))
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
        await until(lambda: len(tracing.spans()) >= 2, what="2 spans")
        await asyncio.sleep(0.05)  # the access lines, written after the answers
    finally:
        await ch.close()
        await srv.drain()
    _AccessLog.logger._writer.flush()
    (server,) = [s for s in tracing.spans() if s.kind is SpanKind.SERVER]
    assert server.attributes["network.peer.address"] == "::1"
    assert isinstance(server.attributes["network.peer.port"], int)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    (line,) = [ln for ln in lines if ln.get("side") == "server"]
    assert line["peer"].startswith("[::1]:"), line


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_client_cancelling_a_traced_server_stream_logs_no_context_error(
    registry: LocalRegistry,
) -> None:
    """A user serves with tracing on (``TelemetryOptions(tracer_provider=<SDK>)``); a
    client opens a server stream, reads one message and cancels it (a routine end for a
    watch or feed stream).

    What happened: the server's reported stream handler (``_reported_stream`` in
    meshkit/_handlers.py) attached the span's OpenTelemetry context when the call
    started and was left suspended at its ``yield`` when grpc.aio's task was cancelled;
    the generator was then closed by the event loop's async-generator finalizer, in a
    task of its own, and the reporter's ``finish`` (``detach_context``) reset the token
    from that other context: opentelemetry-api logged ``ERROR opentelemetry.context:
    Failed to detach context`` with a ValueError traceback, once per cancelled stream.

    What should happen: a client's cancellation is an ordinary outcome (gRPC status
    CANCELLED, which meshkit does record on the span); the server must end the call's
    telemetry without an ERROR-level log line and traceback on every cancelled stream,
    which pages operators and hides real context leaks (OpenTelemetry's API says a token
    is detached in the context that attached it)."""
    handler = _Records()
    otel_logger = logging.getLogger("opentelemetry.context")
    otel_logger.addHandler(handler)
    telemetry = TelemetryOptions(
        tracer_provider=_sdk_tracer_provider(), metrics=False, access_log=False)
    srv = meshkit.MeshServer(
        "echo", [add_echo("a")], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="a", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=telemetry))
    await srv.start()
    try:
        options = meshkit.DialOptions(insecure=True, telemetry=None)
        async with meshkit.dial("echo", registry=registry, options=options) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            stream = ch.unary_stream(method("ServerStream"))
            for _ in range(3):
                call = stream(b"100000", timeout=10)
                assert await call.read() is not grpc.aio.EOF
                call.cancel()
                await asyncio.sleep(0.2)
            gc.collect()
            await asyncio.sleep(0.2)
    finally:
        await srv.drain()
        otel_logger.removeHandler(handler)
    errors = [r.getMessage() for r in handler.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


def _sdk_tracer_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return provider


# -- a call's trace parent is where it was made, not where it is awaited -----------------
async def _echo_and_channel(registry: LocalRegistry, telemetry: TelemetryOptions,
                            *interceptors: Any) -> tuple[meshkit.MeshServer, Any]:
    """An echo server ``e1`` and a channel to it, both traced to ``telemetry``."""
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="e1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=telemetry))
    await srv.start()
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=telemetry, interceptors=interceptors))
    await ch.wait_for_endpoints(1, timeout_s=10)
    return srv, ch


def _parented(spans: list[Any], made_under: list[str], method_name: str) -> list[str]:
    """Problems: each span of ``made_under`` should have exactly one client span of
    ``method_name`` as its child, in its trace, and no such client span should be a root."""
    parents = {s.name: s for s in spans if s.kind is SpanKind.INTERNAL}
    clients = by_name(spans, method_name, SpanKind.CLIENT)
    problems = [f"{method_name}: a client span is the root of a new trace"
                for c in clients if c.parent is None]
    for name in made_under:
        parent = parents[name].context
        children = [c for c in clients if c.parent is not None
                    and c.parent.span_id == parent.span_id
                    and c.context.trace_id == parent.trace_id]
        if len(children) != 1:
            problems.append(f"{len(children)} {method_name} client spans under {name!r}")
    return problems


@pytest.mark.timeout(60)
async def test_a_unary_call_made_under_a_span_is_its_child_wherever_it_is_awaited(
        registry: LocalRegistry, tracing: Tracing) -> None:
    """A unary call made inside a span (with baggage set) and awaited after the ``with``
    block in the same loop turn (``return stub(req)`` from a traced helper; calls made per
    shard under their own spans, then ``asyncio.gather``-ed) ran inline in the awaiting
    task's context, and one first asked something there (``add_done_callback``) started in
    that context: its client span was the root of a new trace (the server's span cut off
    from the caller's), and the baggage set where it was made was not sent. The same call
    awaited a turn later started in the context it was made in. Now every call runs in the
    context it was made in (as grpc.aio's, which start the call and its interceptors when
    made), however and wherever it is awaited."""
    telemetry = TelemetryOptions(tracer_provider=tracing.provider, access_log=False)
    seen_baggage: list[str] = []

    class _Recorder(meshkit.ClientInterceptor):  # what each call carries
        async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
            seen_baggage.append(dict(details.metadata or ()).get("baggage", ""))
            return await proceed(details, request)

    srv, ch = await _echo_and_channel(registry, telemetry, _Recorder())
    tracer = tracing.provider.get_tracer("test")
    try:
        async with asyncio.timeout(20):
            unary = ch.unary_unary(method("Unary"))

            def traced_helper(req: bytes) -> Any:  # returns the call, awaited by its caller
                with tracer.start_as_current_span("helper"):
                    token = otel_context.attach(baggage.set_baggage("tenant", "t-1"))
                    try:
                        return unary(req, timeout=5)
                    finally:
                        otel_context.detach(token)

            assert await traced_helper(b"direct") == b"e1|direct"
            with tracer.start_as_current_span("shard-a"):
                call_a = unary(b"a", timeout=5)
            with tracer.start_as_current_span("shard-b"):
                call_b = unary(b"b", timeout=5)
            assert list(await asyncio.gather(call_a, call_b)) == [b"e1|a", b"e1|b"]
            with tracer.start_as_current_span("used-first"):
                call_c = unary(b"c", timeout=5)
            call_c.add_done_callback(lambda _call: None)  # starts it, outside the span
            assert await call_c == b"e1|c"
            await until(lambda: len([s for s in tracing.spans()
                                     if s.kind is SpanKind.SERVER]) == 4,
                        what="4 server spans")
    finally:
        await ch.close()
        await srv.drain()
    spans = tracing.spans()
    problems = _parented(spans, ["helper", "shard-a", "shard-b", "used-first"],
                         "meshkit.test.Echo/Unary")
    for server in by_name(spans, "meshkit.test.Echo/Unary", SpanKind.SERVER):
        if server.parent is None or server.parent.span_id not in {
                c.context.span_id for c in spans if c.kind is SpanKind.CLIENT}:
            problems.append("a server span is not under a client span")
    assert not problems, problems
    assert seen_baggage[0] == "tenant=t-1", seen_baggage


@pytest.mark.timeout(60)
async def test_a_stream_made_under_a_span_is_its_child_wherever_it_is_used(
        registry: LocalRegistry, tracing: Tracing) -> None:
    """A stream made inside a span and first used (read, iterated, written, awaited)
    after the ``with`` block opened in the context of its first use: its client span was
    the root of a new trace. grpc.aio starts a stream and its interceptors in the context
    it is made in; a meshkit stream still opens on first use, in that context."""
    telemetry = TelemetryOptions(tracer_provider=tracing.provider, access_log=False)
    srv, ch = await _echo_and_channel(registry, telemetry)
    tracer = tracing.provider.get_tracer("test")
    try:
        async with asyncio.timeout(20):
            with tracer.start_as_current_span("server-stream"):
                server_stream = ch.unary_stream(method("ServerStream"))(b"2", timeout=5)
            assert [r async for r in server_stream] == [b"e1|0", b"e1|1"]
            with tracer.start_as_current_span("bidi"):
                bidi = ch.stream_stream(method("Bidi"))(timeout=5)
            await bidi.write(b"x")
            assert await bidi.read() == b"e1|x"
            await bidi.done_writing()
            assert await bidi.read() is grpc.aio.EOF
            with tracer.start_as_current_span("client-stream"):
                client_stream = ch.stream_unary(method("ClientStream"))(iter([b"p", b"q"]), 5)
            assert await client_stream == b"e1|p,q"
            await until(lambda: len([s for s in tracing.spans()
                                     if s.kind is SpanKind.SERVER]) == 3,
                        what="3 server spans")
    finally:
        await ch.close()
        await srv.drain()
    spans = tracing.spans()
    problems = (_parented(spans, ["server-stream"], "meshkit.test.Echo/ServerStream")
                + _parented(spans, ["bidi"], "meshkit.test.Echo/Bidi")
                + _parented(spans, ["client-stream"], "meshkit.test.Echo/ClientStream"))
    assert not problems, problems


# A server as an application runs one: configure_logging() (nothing else set up for the
# standard library's logging), a MeshServer with the default telemetry; a plain grpc.aio
# client then sends 200 calls with each malformed propagation header.
_BAD_HEADERS_SERVER = r'''
import asyncio, sys, tempfile
import grpc
import meshkit
from meshkit.observability import configure_logging
from tests.support.echo import add_echo, method

TRACEPARENT = ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
HEADERS = [
    (("baggage", "x" * 5000),),
    (("baggage", "bad entry;;;"),),
    (("baggage", "a b=c"),),
    (TRACEPARENT, ("tracestate", "Bad Key=" + "v" * 400)),
]

async def main():
    configure_logging()
    with tempfile.TemporaryDirectory() as d:
        srv = meshkit.MeshServer("bag", [add_echo("b1")], registry=f"local://{d}",
                                 options=meshkit.ServeOptions(
                                     host="127.0.0.1", port=0, insecure=True,
                                     instance_id="b1", grace_s=1.0, drain_delay_s=0.0))
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                unary = ch.unary_unary(method("Unary"))
                for md in HEADERS:
                    for _ in range(int(sys.argv[1])):
                        assert await unary(b"x", metadata=md, timeout=10) == b"b1|x"
        finally:
            await srv.drain()
    print("DONE", flush=True)

asyncio.run(main())
'''

# the OpenTelemetry API's warnings the headers above give, one fragment each
_OTEL_WARNINGS = (
    "exceeded the maximum number of bytes per list-member",  # "x" * 5000
    "doesn't match the format",  # "bad entry;;;"
    "Invalid baggage entry",  # "a b=c"
    "Member doesn't match the w3c identifiers format",  # the tracestate
)


@pytest.mark.timeout(120)
def test_malformed_propagation_headers_log_a_bounded_number_of_short_lines() -> None:
    """A caller sending a malformed ``baggage`` (or ``tracestate``) header on every call:
    the OpenTelemetry API's propagators log a warning per call on their standard library
    loggers, quoting the header (up to ~8 KB of the caller's text). Before: 200 calls gave
    200 warning lines of each kind on the server's stderr, the 5000-character entry quoted
    in full on each; a flood and an injection of the caller's text into the server's log.
    Now the first line of each kind per minute gets through with the caller's text cut to
    200 characters (its length told), the others are counted."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHKIT_", "OTEL_", "PYTHON"))}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run([sys.executable, "-c", _BAD_HEADERS_SERVER, "200"], env=env,
                          cwd=root, capture_output=True, text=True, timeout=100,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stdout == "DONE\n", proc.stderr[-2000:]
    lines = proc.stderr.splitlines()

    def message(line: str) -> str:
        # configure_logging's JSON lines carry the warning as their event (beside
        # level, logger and time); a plain line is the message itself
        try:
            return str(json.loads(line)["event"])
        except (ValueError, KeyError, TypeError):
            return line

    for fragment in _OTEL_WARNINGS:
        found = [message(ln) for ln in lines if fragment in ln]
        assert 1 <= len(found) <= 3, (fragment, len(found), found[:1])
        assert all(len(m) <= 400 for m in found), (fragment, [len(m) for m in found])
    long = [message(ln) for ln in lines if _OTEL_WARNINGS[0] in ln]
    assert "5000 chars" in long[0], long[0]


def _record(msg: str, *args: Any, name: str = "opentelemetry.baggage.propagation"
            ) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_bounded_log_filter_lets_one_record_per_template_and_interval_through() -> None:
    """The first record of a template goes through (its string arguments escaped and cut,
    their length told); the others within the interval are dropped and counted, the count
    told on the template's first record after it; another template is its own kind."""
    from meshkit.observability._tracing import BoundedLogFilter

    now = [100.0]
    f = BoundedLogFilter(interval_s=60, max_arg_chars=10, clock=lambda: now[0])
    first = _record("Invalid baggage entry: `%s`", "a\nforged line " + "y" * 50)
    assert f.filter(first)
    assert first.getMessage() == "Invalid baggage entry: `a\\nforged ... (64 chars)`"
    assert "\n" not in first.getMessage()
    for _ in range(5):
        now[0] += 10
        assert not f.filter(_record("Invalid baggage entry: `%s`", "b=c d"))
    other = _record("Baggage list-member `%s` doesn't match the format", "bad;;;")
    assert f.filter(other) and other.getMessage().endswith("`bad;;;` doesn't match the format")
    now[0] = 160.0
    later = _record("Invalid baggage entry: `%s`", "e f=g")
    assert f.filter(later)
    assert later.getMessage() == "Invalid baggage entry: `e f=g` (and 5 more in the last 60 s)"
    assert not f.filter(_record("Invalid baggage entry: `%s`", "h"))
    now[0] = 400.0  # a whole quiet interval: the next one goes through, with its count
    again = _record("Invalid baggage entry: `%s`", "i")
    assert f.filter(again) and again.getMessage().endswith("(and 1 more in the last 240 s)")
    # the same template on another logger is another kind
    assert f.filter(_record("Invalid baggage entry: `%s`", "j", name="another"))


def test_bounded_log_filter_bounds_its_templates_and_never_raises() -> None:
    """Past ``max_templates`` further templates share one count; a record whose arguments
    do not fit its template, a clock that raises: the record goes through, nothing is
    raised to the code that logged."""
    from meshkit.errors import ConfigError
    from meshkit.observability._tracing import BoundedLogFilter

    f = BoundedLogFilter(max_templates=2, clock=lambda: 0.0)
    assert f.filter(_record("one %s", "a")) and f.filter(_record("two %s", "b"))
    assert f.filter(_record("three %s", "c"))  # the shared kind's first
    assert not f.filter(_record("four %s", "d"))  # shares its count
    assert len(f._kinds) == 3
    # arguments that do not fit the template: getMessage raises later, not the filter
    assert BoundedLogFilter().filter(_record("two args %s %s", "x" * 300))
    mapping = logging.LogRecord("x", logging.WARNING, __file__, 1, "%(k)s",
                                ({"k": "z" * 500},), None)
    assert BoundedLogFilter().filter(mapping) and len(mapping.getMessage()) < 230

    def broken() -> float:
        raise RuntimeError("clock")

    assert BoundedLogFilter(clock=broken).filter(_record("x %s", "y"))
    for kwargs, quoted in (({"interval_s": 0}, "0"), ({"interval_s": float("nan")}, "nan"),
                           ({"interval_s": True}, "True"), ({"max_arg_chars": 0}, "0"),
                           ({"max_templates": 1.5}, "1.5")):
        with pytest.raises(ConfigError, match=quoted):
            BoundedLogFilter(**kwargs)  # type: ignore[arg-type]


def test_bounded_log_filter_counts_every_record_of_threads_logging_at_once() -> None:
    """8 threads logging the same warning 500 times each through a logger with the filter:
    one record goes through, and the count it later tells is every other one."""
    import threading

    from meshkit.observability._tracing import BoundedLogFilter

    now = [0.0]
    f = BoundedLogFilter(clock=lambda: now[0])
    logger = logging.getLogger("meshkit.test.bounded")
    logger.propagate = False
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    logger.addFilter(f)
    try:
        def flood() -> None:
            for i in range(500):
                logger.warning("Invalid baggage entry: `%s`", f"k{i}")

        threads = [threading.Thread(target=flood) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(seen) == 1
        now[0] = 61.0
        logger.warning("Invalid baggage entry: `%s`", "last")
        assert seen[1] == "Invalid baggage entry: `last` (and 3999 more in the last 61 s)"
    finally:
        logger.removeFilter(f)
        logger.removeHandler(handler)
        logger.propagate = True


def test_a_server_s_telemetry_bounds_the_propagators_loggers_once() -> None:
    """Building a server's telemetry interceptor adds one filter to each of the
    OpenTelemetry propagation loggers, however many are built."""
    from meshkit.observability import TelemetryServerInterceptor
    from meshkit.observability._tracing import PROPAGATION_LOGGERS, BoundedLogFilter

    TelemetryServerInterceptor("a", TelemetryOptions(metrics=False))
    TelemetryServerInterceptor("b", TelemetryOptions(metrics=False))
    for name in PROPAGATION_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, BoundedLogFilter) for f in filters) == 1, name
