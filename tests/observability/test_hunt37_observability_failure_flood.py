"""A broken span processor (raising in ``on_start`` or ``on_end``) costs each side's
telemetry one warning line per kind of failure and minute, the later failures counted,
not one line per call. Before, every call logged its own ``telemetry span start failed``
or ``telemetry completion failed`` warning: a processor or exporter broken in
production flooded the logs at the call rate."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from structlog.testing import capture_logs

import meshkit
from meshkit._log import _repeat_logs
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions

_CALLS = 25


class _BrokenStart(SpanProcessor):
    def __init__(self) -> None:
        self.failures = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.failures += 1
        raise RuntimeError("enrichment processor broke")


class _BrokenEnd(SpanProcessor):
    def __init__(self) -> None:
        self.failures = 0

    def on_end(self, span: Any) -> None:
        self.failures += 1
        raise RuntimeError("exporter broke")


def _add(_servicer: Any, server: Any) -> None:
    async def work(request: bytes, context: Any) -> bytes:
        return b"ok:" + request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "hunt.S", {"W": grpc.unary_unary_rpc_method_handler(work)}),))


def _provider(broken: SpanProcessor) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(broken)
    return provider


@pytest.mark.parametrize(("where", "event"), [
    ("start", "telemetry span start failed"),
    ("end", "telemetry completion failed"),
])
async def test_a_broken_span_processor_logs_a_line_a_minute_not_one_per_call(
        registry: LocalRegistry, where: str, event: str) -> None:
    """Each side's first failure is logged in full; the later ones only counted."""
    broken = _BrokenStart if where == "start" else _BrokenEnd
    processors = [broken(), broken()]  # the server's, the client's
    srv = meshkit.MeshServer("flood", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="s1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=TelemetryOptions(
                                     tracer_provider=_provider(processors[0]), metrics=False,
                                     access_log=False)))
    await srv.start()
    ch = meshkit.dial("flood", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=TelemetryOptions(
            tracer_provider=_provider(processors[1]), metrics=False, access_log=False)))
    try:
        await ch.wait_for_endpoints(1)
        # a repeat log an earlier test in this worker left with counts untold (its
        # interceptors not yet collected) tells them now, not inside the capture
        for log in list(_repeat_logs):
            if log._event == event:
                log.flush()
        for p in processors:
            p.failures = 0
        with capture_logs() as logs:
            for i in range(_CALLS):
                assert await ch.unary_unary("/hunt.S/W")(b"%d" % i, timeout=5) == b"ok:%d" % i
            await asyncio.sleep(0.1)  # the completions run a turn or two after the answer
            lines = [e for e in logs if e["event"] == event]
            for log in list(_repeat_logs):  # the counts a timer would tell in a minute
                if log._event == event:
                    log.flush()
            failures = sum(p.failures for p in processors)
    finally:
        await ch.close()
        await srv.drain()
    # one full line per side (client, server), not one per call and side
    assert len(lines) == 2, lines
    assert all(e["error"] == "RuntimeError" and e["log_level"] == "warning" for e in lines)
    # and every other failure told in a count: at least one per call and side (a
    # loaded box may add an attempt or a span; each failure is told once either way)
    counts = [e for e in logs if e["event"] == event.replace(" failed", " failures")]
    assert failures >= 2 * _CALLS, failures
    assert len(lines) + sum(e["count"] for e in counts) == failures, counts
    assert all(e["error"] == "RuntimeError" for e in counts)


async def test_a_peer_identity_function_that_raises_logs_a_line_a_minute(
        registry: LocalRegistry) -> None:
    """``TelemetryOptions.peer_identity`` raising on every call: one warning, not one per
    call."""
    def identity() -> str:
        raise LookupError("no identity here")

    srv = meshkit.MeshServer("flood", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="s1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=TelemetryOptions(
                                     tracer_provider=TracerProvider(), metrics=False,
                                     access_log=True, peer_identity=identity)))
    await srv.start()
    ch = meshkit.dial("flood", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=None))
    try:
        await ch.wait_for_endpoints(1)
        with capture_logs() as logs:
            for i in range(_CALLS):
                assert await ch.unary_unary("/hunt.S/W")(b"%d" % i, timeout=5) == b"ok:%d" % i
    finally:
        await ch.close()
        await srv.drain()
    lines = [e for e in logs if e["event"] == "telemetry peer identity failed"]
    assert len(lines) == 1, lines
    assert lines[0]["error"] == "LookupError"
