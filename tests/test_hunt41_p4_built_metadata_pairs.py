"""The channel's metadata check passes the pairs meshkit built legal itself unread
(:class:`meshkit._metadata.BuiltPair`: telemetry's own ``traceparent``, the retry's
attempt count) and still refuses, ``INTERNAL`` and before anything is sent, any header a
user-configured propagator or a user's interceptor puts in the call, also one that
replaces the mesh's own ``traceparent``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import propagate
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._metadata import (
    PREVIOUS_ATTEMPTS,
    BuiltPair,
    check_metadata,
    with_previous_attempts,
)
from meshkit.discovery import LocalRegistry
from meshkit.errors import InvalidMetadataError
from meshkit.interceptors import ClientCallDetails, ClientInterceptor, UnaryProceed
from meshkit.observability import TelemetryOptions
from tests.conftest import EchoFactory
from tests.support.echo import method

_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Recorder(grpc.aio.ServerInterceptor):
    """Records the metadata of every call that reaches the server."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.seen.append(dict(details.invocation_metadata or ()))
        return await continuation(details)


class _NoteHeader(TextMapPropagator):
    """A propagator of the user's (as OTEL_PROPAGATORS would name one) that writes a
    header from the user's own text: here not printable ASCII."""

    def __init__(self, note: str) -> None:
        self.note = note

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        from opentelemetry import context as otel_context

        return context if context is not None else otel_context.get_current()

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        assert setter is not None
        setter.set(carrier, "x-tenant-note", self.note)

    @property
    def fields(self) -> set[str]:
        return {"x-tenant-note"}


class _Seen(ClientInterceptor):
    """Records the type of the ``traceparent`` pair it sees, then changes the metadata
    with ``change`` (none by default) and proceeds."""

    def __init__(self, change: Any = None) -> None:
        self.change = change
        self.types: list[type] = []

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: UnaryProceed) -> Any:
        self.types += [type(kv) for kv in details.metadata if kv[0] == "traceparent"]
        if self.change is not None:
            details.metadata = self.change(list(details.metadata))
        return await proceed(details, request)


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    """A private tracer provider sampling every span (the global one untouched)."""
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    yield tp
    tp.shutdown()


def _opts(provider: TracerProvider, **kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, telemetry=TelemetryOptions(
        tracer_provider=provider, registry=CollectorRegistry()), **kw)


def _calls(ch: meshkit.MeshChannel) -> list[tuple[int, int, int]]:
    return [(e.calls, e.failures, e.in_flight) for e in ch.stats().endpoints]


def test_a_built_pair_is_a_pair_and_passes_the_check_unread() -> None:
    """A BuiltPair equals, unpacks and prints as the plain pair; the check passes it
    unread (even one built wrong, which meshkit never does), while the same key and
    value as a plain tuple are read and refused; the retry's attempt count is built."""
    pair = BuiltPair(("traceparent", _TP))
    assert pair == ("traceparent", _TP) and repr(pair) == repr(("traceparent", _TP))
    key, value = pair
    assert (key, value) == ("traceparent", _TP)
    check_metadata([("authorization", "Bearer t"), pair], request=True)
    check_metadata([BuiltPair(("x-k", "bad\n"))], request=True)  # not read: never made so
    with pytest.raises(InvalidMetadataError, match="'x-k'"):
        check_metadata([("x-k", "bad\n")], request=True)
    with pytest.raises(InvalidMetadataError, match="'x-k'"):
        check_metadata([pair, ("x-k", "bad\n")], request=True)
    out = with_previous_attempts([("a", "1"), (PREVIOUS_ATTEMPTS, "0")], 2)
    assert out == [("a", "1"), (PREVIOUS_ATTEMPTS, "2")]
    assert type(out[-1]) is BuiltPair and type(out[0]) is tuple


async def test_a_bad_header_from_a_user_propagator_is_refused_before_sending(
        registry: LocalRegistry, echo_servers: EchoFactory, provider: TracerProvider,
) -> None:
    """With a propagator of the user's beside the W3C pair, the trace context is
    injected by the global propagator (not built by meshkit): a header it writes from
    the user's text that gRPC cannot send fails the call INTERNAL naming the key, and
    nothing reaches the server; the same propagator with a legal value goes through."""
    recorder = _Recorder()
    await echo_servers("e1", interceptors=(recorder,))
    seen = _Seen()
    default = propagate.get_global_textmap()
    async with meshkit.dial("echo", registry=registry,
                            options=_opts(provider, interceptors=(seen,))) as ch:
        unary = ch.unary_unary(method("Unary"))
        assert await unary(b"warm", timeout=5) == b"e1|warm"
        assert seen.types == [BuiltPair]  # the default pair: meshkit's own traceparent
        warm = _calls(ch)
        propagate.set_global_textmap(CompositePropagator([default, _NoteHeader("caf\u00e9")]))
        try:
            for _ in range(3):
                with pytest.raises(InvalidMetadataError, match="'x-tenant-note'") as err:
                    await unary(b"x", timeout=5)
                assert err.value.code() is grpc.StatusCode.INTERNAL
            assert seen.types[1:] == [tuple] * 3  # the propagator's pairs: read by the check
            assert _calls(ch) == warm and len(recorder.seen) == 1
            propagate.set_global_textmap(CompositePropagator([default, _NoteHeader("cafe")]))
            assert await unary(b"ok", timeout=5) == b"e1|ok"
        finally:
            propagate.set_global_textmap(default)
    assert recorder.seen[-1]["x-tenant-note"] == "cafe"
    assert recorder.seen[-1]["traceparent"].startswith("00-")


@pytest.mark.parametrize("kind", ["replaced", "moved"])
async def test_an_interceptor_replacing_the_mesh_traceparent_is_checked(
        registry: LocalRegistry, echo_servers: EchoFactory, provider: TracerProvider,
        kind: str,
) -> None:
    """A user's interceptor that puts its own pair under the mesh's ``traceparent`` key
    (a value gRPC cannot send) fails the call INTERNAL before sending; one that only
    moves the mesh's pair (a copy of the list, reversed) sends it as built."""

    def replaced(md: list[Any]) -> list[Any]:
        return [(k, v + "\n") if k == "traceparent" else (k, v) for k, v in md]

    def moved(md: list[Any]) -> list[Any]:
        return [("x-first", "1"), *reversed(md)]

    recorder = _Recorder()
    await echo_servers("e1", interceptors=(recorder,))
    seen = _Seen(replaced if kind == "replaced" else moved)
    async with meshkit.dial("echo", registry=registry,
                            options=_opts(provider, interceptors=(seen,))) as ch:
        unary = ch.unary_unary(method("Unary"))
        await ch.wait_for_endpoints(1)
        for _ in range(3):
            md = (("authorization", "Bearer t"),)
            if kind == "replaced":
                with pytest.raises(InvalidMetadataError, match="'traceparent'") as err:
                    await unary(b"x", timeout=5, metadata=md)
                assert err.value.code() is grpc.StatusCode.INTERNAL
            else:
                assert await unary(b"x", timeout=5, metadata=md) == b"e1|x"
        assert seen.types == [BuiltPair] * 3
        if kind == "replaced":
            assert _calls(ch) == [(0, 0, 0)] and recorder.seen == []
        else:
            assert len(recorder.seen) == 3
            for md_seen in recorder.seen:
                assert md_seen["x-first"] == "1" and md_seen["authorization"] == "Bearer t"
                assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
                                    md_seen["traceparent"])
