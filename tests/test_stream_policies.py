"""Streaming calls through the mesh's policies, against real servers: the request gate's
admission of request streams (outermost, before any of the server chain), and, on the
client, what an open stream weighs in outlier ejection's half-open probe and in P2C's
count of pending requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RateLimitOptions
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value
               for f in text_string_to_metric_families(generate_latest(reg).decode())
               for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _telemetry(prom: CollectorRegistry) -> TelemetryOptions:
    return TelemetryOptions(registry=prom, tracing=False, access_log=False)


async def _held_open(first: bytes = b"a") -> AsyncIterator[bytes]:
    """A request stream that sends one message and then stays open (a subscription)."""
    yield first
    await asyncio.sleep(120)


async def _fill_stream_places(raw: grpc.aio.Channel, calls: list[Any]) -> None:
    """Open the 9 request streams a ``max_concurrent_rpcs=1`` server has places for (1 +
    the 8 of headroom), each answered once, appended to ``calls``."""
    bidi = raw.stream_stream(method("Bidi"))
    for _ in range(9):
        call = bidi(_held_open(), timeout=60)
        calls.append(call)
        assert await call.read() == b"e1|a"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["Bidi", "ClientStream"])
async def test_a_request_stream_shed_by_the_gate_is_not_counted_as_handled(
    echo_servers: EchoFactory, kind: str,
) -> None:
    """A server with ``ServerLimits(max_concurrent_rpcs=1)`` holds 9 open bidi streams
    (1 + the 8 places of headroom); a 10th request stream (bidi or client stream) is shed
    ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer. That refusal was counted
    twice: in ``meshkit_server_gate_refusals_total{reason="shed"}`` and in
    ``grpc_server_started_total`` / ``grpc_server_handled_total{grpc_code=
    "ResourceExhausted"}``, because ``RequestGate.admit_stream`` ran from the request
    guard, inside the telemetry/auth/rate-limit wrap. The README says gate refusals are
    "refused by the request gate before any code of the call ran (so not in
    grpc_server_handled_total)", as a shed unary call is: a request stream is now admitted
    by the gate's own outermost step."""
    prom = CollectorRegistry()
    srv = await echo_servers("e1", telemetry=_telemetry(prom),
                             limits=meshkit.ServerLimits(max_concurrent_rpcs=1))
    calls: list[Any] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as raw:
        try:
            await _fill_stream_places(raw, calls)
            # the shed stream writes nothing (the gate sheds it at its start, message or
            # not): a refusal arriving while a write is in flight can end the call grpc.aio's
            # own client-side INTERNAL "Internal error from Core" instead
            shed = (raw.stream_stream(method("Bidi"))(timeout=60) if kind == "Bidi" else
                    raw.stream_unary(method("ClientStream"))(timeout=60))
            assert await asyncio.wait_for(shed.code(), 30) is \
                grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await shed.details() == "server busy"
            assert ("meshkit-nack", "1") in tuple(await shed.trailing_metadata())
            assert srv.stats().gate_shed == 1
        finally:
            for call in calls:
                call.cancel()
        # the 9 streams' ends are counted after the shed call's (which ended first)
        await until(lambda: _value(prom, "grpc_server_handled_total",
                                   grpc_method="Bidi") >= 9, timeout_s=20,
                    what="the 9 open streams counted as handled")
    assert _value(prom, "grpc_server_handled_total", grpc_code="ResourceExhausted") == 0, \
        "a gate refusal counted as a handled call"
    assert _value(prom, "grpc_server_handled_total", grpc_method="Bidi") == 9
    assert _value(prom, "grpc_server_started_total", grpc_method="Bidi") == 9
    assert _value(prom, "grpc_server_started_total", grpc_method="ClientStream") == 0
    assert _value(prom, "meshkit_server_gate_refusals_total", reason="shed") == 1


@pytest.mark.timeout(60)
async def test_a_request_stream_shed_by_the_gate_spends_no_rate_limit_quota(
    echo_servers: EchoFactory,
) -> None:
    """A caller allowed ``10/minute`` on a bidi method opens 9 streams on a server with
    ``ServerLimits(max_concurrent_rpcs=1)`` (9 stream places); its 10th is shed "server
    busy" (a nack: shed before any code ran), and it closes its 9 streams. Its next call,
    the 10th the server ever served, was refused ``RESOURCE_EXHAUSTED`` "rate limit
    exceeded" for a minute: the rate limit, which runs in the chain before the request
    guard, had counted the shed stream (and a mesh client retrying the nack on other
    replicas was charged on each). A call refused before any of it ran uses no quota, as
    a shed unary call never did: the next call is admitted."""
    limits = RateLimitOptions(rules={method("Bidi"): "10/minute"}, strategy="fixed-window")
    srv = await echo_servers("e1", limits=meshkit.ServerLimits(max_concurrent_rpcs=1),
                             rate_limit=limits)
    calls: list[Any] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as raw:
        try:
            await _fill_stream_places(raw, calls)
            shed = raw.stream_stream(method("Bidi"))(timeout=60)  # writes nothing (as above)
            assert await asyncio.wait_for(shed.code(), 30) is \
                grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await shed.details() == "server busy"
        finally:
            for call in calls:
                call.cancel()
        await until(lambda: srv.gate is not None and srv.gate.streams == 0, timeout_s=20,
                    what="the streams ended on the server")
        tenth = raw.stream_stream(method("Bidi"))(_held_open(b"z"), timeout=60)
        try:
            assert await tenth.read() == b"e1|z"
        except grpc.aio.AioRpcError as e:
            pytest.fail(f"the 10th served call was refused: {e.code()} {e.details()!r}")
        finally:
            tenth.cancel()


@pytest.mark.timeout(60)
async def test_a_stream_probe_does_not_keep_a_healthy_endpoint_out_of_rotation(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """Endpoint ``a`` fails a few calls and is ejected (``consecutive_failures=2``,
    ``base_ejection_s=0.5``). Once its ejection is over, the next call is a long-lived
    bidi stream (a subscription); the balancer sends it to ``a`` as the half-open probe,
    and ``a`` answers it at once. ``a`` stayed ejected, and got none of the following
    unary calls, for as long as that stream stayed open (a watch may live for hours): the
    probe's verdict came only from the stream's final status. The README says "then one
    probe call decides (half-open)", and a stream that has answered has shown the endpoint
    works (meshkit's retry policy commits a stream at its first message for the same
    reason, gRFC A6; Envoy and gRFC A50 never hold an endpoint out behind a stream): the
    probe's first response decides, and ``a`` is back in rotation at once."""
    from meshkit.balancer import OutlierOptions, RoundRobin

    await echo_servers("a")
    await echo_servers("b")
    options = meshkit.DialOptions(
        insecure=True, balancer=RoundRobin, retry=None,
        outlier=OutlierOptions(consecutive_failures=2, base_ejection_s=0.5))

    def ejected(ch: meshkit.MeshChannel) -> set[str]:
        return {e.instance_id for e in ch.stats().endpoints if e.ejected}

    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        fail_on_a = ch.unary_stream(method("FailStream"))
        for _ in range(40):
            if "a" in ejected(ch):
                break
            try:
                _ = [m async for m in fail_on_a(b"UNAVAILABLE:0@a", timeout=10)]
            except grpc.aio.AioRpcError as e:  # on a; b answers 3 messages
                assert e.code() is grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.05)  # stream outcomes are reported from done callbacks
        await until(lambda: "a" in ejected(ch), timeout_s=10, what="a ejected")
        # its 0.5 s ejection, which began before it was seen, is over after this (a
        # lower bound, load or not): the next pick probes it
        await asyncio.sleep(0.6)
        probe = ch.stream_stream(method("Bidi"))(_held_open(b"p"), timeout=60)
        try:
            assert await asyncio.wait_for(probe.read(), 10) == b"a|p"  # a answered
            await until(lambda: "a" not in ejected(ch), timeout_s=10,
                        what="a back in rotation while its probe stream stays open")
            unary = ch.unary_unary(method("Unary"))
            served = [(await unary(b"x", timeout=10)).split(b"|")[0] for _ in range(20)]
            assert not probe.done(), "the probe stream is still open"
        finally:
            probe.cancel()
    assert served.count(b"a") >= 5, served


async def _silent_until(go: asyncio.Event, message: bytes) -> AsyncIterator[bytes]:
    """A request stream that sends nothing until ``go`` is set, then ``message``, and
    stays open (a subscription whose server has had nothing to say yet)."""
    await go.wait()
    yield message
    await asyncio.sleep(120)


@pytest.mark.timeout(60)
async def test_a_silent_stream_probe_does_not_keep_a_healthy_endpoint_out_of_rotation(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """Endpoint ``a`` is ejected (``consecutive_failures=2``, ``base_ejection_s=0.5``);
    once its ejection is over, the next call is a bidi stream whose server has sent
    nothing yet (a watch that speaks only on events), sent to ``a`` as the half-open
    probe. A stream probe is decided at its first response or its end: with neither, no
    other call could probe ``a``, and ``a`` (healthy) got none of the unary calls for as
    long as the stream stayed silent. Undecided after ``base_ejection_s``, ``a`` is back
    in rotation (Envoy and gRFC A50 return an endpoint when its time is up), while the
    stream stays open on ``a`` and answers there when spoken to."""
    from meshkit.balancer import OutlierOptions, RoundRobin

    await echo_servers("a")
    await echo_servers("b")
    options = meshkit.DialOptions(
        insecure=True, balancer=RoundRobin, retry=None,
        outlier=OutlierOptions(consecutive_failures=2, base_ejection_s=0.5))

    def on_a(ch: meshkit.MeshChannel) -> Any:
        return next(e for e in ch.stats().endpoints if e.instance_id == "a")

    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        fail_on_a = ch.unary_stream(method("FailStream"))
        for _ in range(40):
            if on_a(ch).ejected:
                break
            try:
                _ = [m async for m in fail_on_a(b"UNAVAILABLE:0@a", timeout=10)]
            except grpc.aio.AioRpcError as e:  # on a; b answers 3 messages
                assert e.code() is grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.05)  # stream outcomes are reported from done callbacks
        await until(lambda: on_a(ch).ejected, timeout_s=10, what="a ejected")
        # its 0.5 s ejection, which began before it was seen, is over after this (a
        # lower bound, load or not): the next pick probes it
        await asyncio.sleep(0.6)
        go = asyncio.Event()
        probe = ch.stream_stream(method("Bidi"))(_silent_until(go, b"p"), timeout=60)
        unary = ch.unary_unary(method("Unary"))
        served: list[bytes] = []

        async def a_serves() -> bool:
            served.append((await unary(b"x", timeout=10)).split(b"|")[0])
            return served[-1] == b"a"

        first = asyncio.ensure_future(probe.read())  # opens the stream (calls are lazy)
        try:
            await until(lambda: on_a(ch).in_flight == 1, timeout_s=10,
                        what="the silent stream open on a, as its probe")
            assert on_a(ch).ejected
            await until(a_serves, timeout_s=10, interval_s=0.05,
                        what="a back in rotation while its probe stream stays silent")
            assert not on_a(ch).ejected
            assert not probe.done() and not first.done(), "the probe stream is still open"
            go.set()
            assert await asyncio.wait_for(first, 10) == b"a|p"  # it was a's
        finally:
            probe.cancel()
            first.cancel()


@pytest.mark.timeout(90)
async def test_idle_open_streams_do_not_starve_their_endpoint_of_unary_calls(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """A client holds 100 idle bidi streams (subscriptions that answered once and now
    wait) on endpoint ``a``; a second endpoint ``b`` joins, whose unary calls take 60 ms
    more than ``a``'s. With the default balancer (P2C over peak EWMA; slow start off and
    a 1 s decay here) every unary call went to the slower ``b``: each open stream stayed
    counted in ``a``'s ``pending`` until it ended (the channel reported a stream to the
    balancer only from its done callback), so ``a``'s load read ``rtt x 101`` (measured:
    ``a`` served 0 of 200 unary calls with 10 idle streams, at a fifth of ``b``'s
    latency). P2C's ``pending`` is outstanding requests; Finagle's ``p2cPeakEwma`` and
    Linkerd's ``PeakEwma`` stop counting a call when its response starts, so an answered
    stream no longer counts, and the faster endpoint gets most of the unary calls; the
    streams still count in ``in_flight`` (what a draining sub-channel waits for)."""
    from meshkit.balancer import P2C, P2COptions

    unlimited = meshkit.ServerLimits(max_concurrent_rpcs=None, max_concurrent_streams=None)
    await echo_servers("a", limits=unlimited)
    options = meshkit.DialOptions(
        insecure=True, outlier=None,
        balancer=lambda: P2C(P2COptions(slow_start_s=0.0, decay_s=1.0)))
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(10):
            await unary(b"w", timeout=10)
        streams = []
        try:
            for _ in range(100):
                s = ch.stream_stream(method("Bidi"))(_held_open(b"s"), timeout=90)
                assert await asyncio.wait_for(s.read(), 10) == b"a|s"
                streams.append(s)
            # 60 ms slower (was 20: on a loaded box a's own calls read 27 ms, b's no
            # slower, and a served 9 of 40 in a before-stop make test)
            await echo_servers("b", delay_s=0.06)
            await ch.wait_for_endpoints(2)
            for _ in range(10):  # b gets sampled
                await unary(b"w", timeout=10)
            served = [(await unary(b"x", timeout=10)).split(b"|")[0] for _ in range(40)]
            loads = {e.instance_id: (e.pending, e.rtt_ms, e.load_ms)
                     for e in ch.stats().endpoints}
            in_flight = {e.instance_id: e.in_flight for e in ch.stats().endpoints}
        finally:
            for s in streams:
                s.cancel()
    assert in_flight["a"] == 100, in_flight
    assert served.count(b"a") >= 20, (
        f"a served {served.count(b'a')} of 40 unary calls; (pending, rtt_ms, load_ms) "
        f"per endpoint: {loads}")
