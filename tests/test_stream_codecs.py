"""Stream messages their codecs refuse, against real servers. grpc.aio sends an empty
message in place of a request message its serializer refuses and hands the reader
``None`` for a response message its deserializer refuses (both only logged,
grpc/grpc#34894); a meshkit stream ends ``INTERNAL`` instead, so nothing is sent or read
in place of a message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import (
    RequestIteratorError,
    RequestSerializationError,
    ResponseDeserializationError,
)
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method
from tests.support.wait import until

_SECRET = "s3cr3t-field"


def _ser(message: str) -> bytes:
    if message.startswith("bad"):
        raise ValueError(f"cannot serialise {_SECRET}")
    return message.encode()


def _deser(raw: bytes) -> str:
    if raw.endswith(b"|1"):
        raise ValueError(f"cannot parse {_SECRET}")
    return raw.decode()


@pytest.fixture(params=["in-mesh", "attempt-interceptors"])
def attempts(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The two codec paths: the mesh runs the codecs (no attempt interceptors), or
    grpc.aio does under a pass-through attempt interceptor (which sees the messages)."""
    if request.param == "in-mesh":
        return {}
    return {"attempt_interceptors": (PassAll(),)}


def _opts(attempts: dict[str, Any], **kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, retry=None, **attempts, **kw)


def _messages() -> Iterator[str]:
    yield "a"
    yield "bad"
    yield "c"


async def _amessages() -> AsyncIterator[str]:
    for m in _messages():
        yield m


async def _counts(ch: meshkit.MeshChannel) -> list[tuple[int, int | None]]:
    """Endpoints' in-flight and pending counts once streams' outcomes are reported (a
    stream's is reported from its done callback, a loop turn or two after it ends)."""
    for _ in range(200):
        counts = [(e.in_flight, e.pending) for e in ch.stats().endpoints]
        if all(c == (0, 0) for c in counts):
            break
        await asyncio.sleep(0.01)
    return counts


def _failures(ch: meshkit.MeshChannel) -> list[int]:
    """Failures counted against each endpoint (a refused request is the caller's, a
    refused response the answering endpoint's)."""
    return [e.failures for e in ch.stats().endpoints]


@pytest.mark.parametrize("source", [_messages, _amessages])
async def test_a_request_message_that_does_not_serialize_ends_a_client_stream(
    registry: LocalRegistry, echo_servers: EchoFactory, source: Any,
    attempts: dict[str, Any],
) -> None:
    """stream-unary with a request iterator (sync or async): INTERNAL naming the method
    and the exception type; the server never sees an empty message."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(attempts)) as ch:
        call = ch.stream_unary(method("ClientStream"), request_serializer=_ser)(
            source(), timeout=5)
        with pytest.raises(RequestSerializationError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert "ValueError" in (err.value.details() or "")
        assert _SECRET not in str(err.value)
        assert isinstance(err.value.__cause__, ValueError)
        assert await call.code() is grpc.StatusCode.INTERNAL
        ok = ch.stream_unary(method("ClientStream"), request_serializer=_ser)
        assert await ok(iter(["x", "y"]), timeout=5) == b"e1|x,y"
        assert await _counts(ch) == [(0, 0)]
        assert _failures(ch) == [0]


@pytest.mark.parametrize("source", [_messages, _amessages])
async def test_a_request_message_that_does_not_serialize_ends_a_bidi_stream(
    registry: LocalRegistry, echo_servers: EchoFactory, source: Any,
    attempts: dict[str, Any],
) -> None:
    """stream-stream with a request iterator: the responses before it arrive, then the
    read raises INTERNAL; the call's code is INTERNAL."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(attempts)) as ch:
        call = ch.stream_stream(method("Bidi"), request_serializer=_ser)(source(), timeout=5)
        got: list[bytes] = []
        with pytest.raises(RequestSerializationError):
            async for m in call:
                got.append(m)
        assert b"e1|" not in got and all(m == b"e1|a" for m in got)
        assert await call.code() is grpc.StatusCode.INTERNAL
        assert await _counts(ch) == [(0, 0)]
        assert _failures(ch) == [0]


async def test_writing_a_message_that_does_not_serialize_ends_the_stream(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any]
) -> None:
    """stream-stream with write(): the failing write raises INTERNAL and ends the call
    (as grpc-go's SendMsg does); the message before it was answered."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(attempts)) as ch:
        call = ch.stream_stream(method("Bidi"), request_serializer=_ser)(timeout=5)
        await call.write("a")
        assert await call.read() == b"e1|a"
        with pytest.raises(RequestSerializationError):
            await call.write("bad")
        assert await call.code() is grpc.StatusCode.INTERNAL
        with pytest.raises(RequestSerializationError):
            await call.read()
        with pytest.raises(asyncio.InvalidStateError):
            await call.write("c")  # the call has ended (grpc.aio's error for a late write)
        assert await _counts(ch) == [(0, 0)]
        assert _failures(ch) == [0]


async def test_a_response_message_that_does_not_deserialize_ends_the_stream(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any]
) -> None:
    """unary-stream (iterated or read) and stream-unary: the messages before it arrive,
    then INTERNAL, never ``None`` in place of a message; the deserializer's exception is
    the cause and its text stays out of the status."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(attempts)) as ch:
        stream = ch.unary_stream(method("ServerStream"), response_deserializer=_deser)
        got: list[Any] = []
        with pytest.raises(ResponseDeserializationError) as err:
            async for m in stream(b"3", timeout=5):
                got.append(m)
        assert got == ["e1|0"]
        assert isinstance(err.value.__cause__, ValueError)
        assert _SECRET not in str(err.value)
        call = stream(b"3", timeout=5)
        assert await call.read() == "e1|0"
        with pytest.raises(ResponseDeserializationError):
            await call.read()
        assert await call.code() is grpc.StatusCode.INTERNAL
        assert not call.cancelled()

        def deser_all(raw: bytes) -> str:
            raise ValueError(_SECRET)

        client = ch.stream_unary(method("ClientStream"), response_deserializer=deser_all)
        with pytest.raises(ResponseDeserializationError):
            await client(iter([b"x"]), timeout=5)
        assert await _counts(ch) == [(0, 0)]
        assert _failures(ch) == [3]  # two streams and one unary response: the endpoint's
    for icpt in attempts.get("attempt_interceptors", ()):
        assert icpt.attempts == 3  # grpc.aio's codecs, under the interceptor, were the test


async def test_stream_codec_errors_without_telemetry_and_cancellation_stays_cancellation(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any]
) -> None:
    """The same without telemetry (no message counting), for a serializer that returns
    something other than bytes; a stream the caller cancels still ends CANCELLED."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry,
                            options=_opts(attempts, telemetry=None)) as ch:
        stream = ch.unary_stream(method("ServerStream"), response_deserializer=_deser)
        with pytest.raises(ResponseDeserializationError):
            async for _ in stream(b"3", timeout=5):
                pass
        bidi = ch.stream_stream(method("Bidi"), request_serializer=lambda m: m)
        call = bidi(iter(["text"]), timeout=5)
        with pytest.raises(RequestSerializationError, match="returned str, not bytes"):
            async for _ in call:
                pass
        assert "returned str" in await call.details()
        slow = ch.unary_stream(method("ServerStream"))(b"100000", timeout=5)
        with pytest.raises(asyncio.CancelledError):
            async for _ in slow:
                slow.cancel()
        assert await slow.code() is grpc.StatusCode.CANCELLED
        assert await _counts(ch) == [(0, 0)]


async def test_a_refused_response_message_on_a_retried_server_stream(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any]
) -> None:
    """A server stream the retry policy may retry (idempotent) reads through its retrying
    call: a refused response message ends it INTERNAL all the same (not retried: the
    stream committed at its first message), and the call does not read as cancelled."""
    from meshkit.resilience import RetryOptions, RetryPolicy

    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, retry=RetryOptions(
        default=RetryPolicy(idempotent=True, max_attempts=3)), **attempts)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = ch.unary_stream(method("ServerStream"), response_deserializer=_deser)(
            b"3", timeout=5)
        assert await call.read() == "e1|0"
        with pytest.raises(ResponseDeserializationError):
            await call.read()
        assert await call.code() is grpc.StatusCode.INTERNAL
        assert "ValueError" in await call.details()
        assert not call.cancelled()
        assert ch.retry is not None and ch.retry.stats.retries == 0


def _failing() -> Iterator[bytes]:
    yield b"a"
    raise ConnectionError(f"the source went away {_SECRET}")


async def _afailing() -> AsyncIterator[bytes]:
    for m in _failing():
        yield m


@pytest.mark.parametrize("source", [_failing, _afailing])
@pytest.mark.parametrize("serializer", [None, bytes], ids=["bytes", "serializer"])
async def test_a_request_iterator_that_raises_fails_the_call_with_its_exception_as_cause(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any],
    source: Any, serializer: Any,
) -> None:
    """grpc.aio cancels a call whose request iterator raised and the caller's await raises
    ``asyncio.CancelledError`` in a task nobody cancelled (the exception only logged at
    debug); a meshkit call raises :class:`RequestIteratorError` (``UNKNOWN``, as grpc's
    synchronous client says "Exception iterating requests!"), naming the exception type,
    the exception as ``__cause__``; not retried, no endpoint's failure."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(attempts)) as ch:
        client = ch.stream_unary(method("ClientStream"), request_serializer=serializer)
        call = client(source(), timeout=5)
        with pytest.raises(RequestIteratorError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.UNKNOWN
        assert "ConnectionError" in (err.value.details() or "")
        assert _SECRET not in str(err.value)
        assert isinstance(err.value.__cause__, ConnectionError)
        assert await call.code() is grpc.StatusCode.UNKNOWN
        bidi = ch.stream_stream(method("Bidi"), request_serializer=serializer)(
            source(), timeout=5)
        got: list[bytes] = []
        with pytest.raises(RequestIteratorError):
            async for m in bidi:
                got.append(m)
        assert got in ([], [b"e1|a"])
        assert await bidi.code() is grpc.StatusCode.UNKNOWN
        assert "ConnectionError" in await bidi.details()
        assert not bidi.cancelled()
        assert await _counts(ch) == [(0, 0)]
        assert _failures(ch) == [0]


def _undecodable_second(raw: bytes) -> bytes:
    if raw.endswith(b"|1"):
        raise ValueError("not a message")
    return raw


@pytest.mark.parametrize("retried", [False, True], ids=["plain", "retried"])
async def test_a_stream_its_codec_ended_is_counted_internal(
    registry: LocalRegistry, echo_servers: EchoFactory, retried: bool
) -> None:
    """A stream the mesh ended for a response its deserializer refused is ``INTERNAL``
    for the caller (``code()``), and so in the client's RED metrics: they counted it
    ``Canceled`` (the attempt the mesh cancelled)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from meshkit.observability import TelemetryOptions
    from meshkit.resilience import Backoff, RetryOptions, RetryPolicy

    prom = CollectorRegistry()
    telemetry = TelemetryOptions(registry=prom, tracing=False, access_log=False)
    policy = RetryPolicy(idempotent=True, max_attempts=3,
                         backoff=Backoff(base_delay_s=0.001, max_delay_s=0.002))
    retry = RetryOptions(default=policy) if retried else None
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
            insecure=True, retry=retry, telemetry=telemetry)) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(method("ServerStream"),
                               response_deserializer=_undecodable_second)(b"3", timeout=5)
        with pytest.raises(ResponseDeserializationError):
            async for _ in call:
                pass
        assert await call.code() is grpc.StatusCode.INTERNAL
        await asyncio.sleep(0.1)  # the client's telemetry finishes from a done callback
    codes = {s.labels["grpc_code"]: s.value
             for f in text_string_to_metric_families(generate_latest(prom).decode())
             for s in f.samples if s.name == "grpc_client_handled_total"
             and s.labels.get("grpc_method") == "ServerStream"}
    assert codes == {"Internal": 1.0}, codes


_JOIN = "/meshkit.test.Replayed/Join"


def _add_join(calls: list[int], first: str) -> Any:
    """``_JOIN``: a client-streaming method that reads every request message, then fails
    the first call ``UNAVAILABLE`` (``first="fail"``) or holds it until it is cancelled
    (``first="hang"``), and answers every later call with the messages joined."""

    async def join(requests: AsyncIterator[bytes], context: Any) -> bytes:
        parts = [r async for r in requests]
        calls.append(len(parts))
        if len(calls) == 1:
            if first == "fail":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
            await asyncio.sleep(60)  # the hedge answers; this attempt is cancelled
        return b",".join(parts)

    def add(_servicer: Any, server: Any) -> None:
        service, name = _JOIN.rsplit("/", 1)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service.lstrip("/"), {name: grpc.stream_unary_rpc_method_handler(join)}),))

    return add, None


def _sample(prom: Any, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value
               for f in text_string_to_metric_families(generate_latest(prom).decode())
               for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", ["fail", "hang"], ids=["retried", "hedged"])
@pytest.mark.parametrize("container", [list, tuple])
async def test_a_replayed_client_stream_counts_the_callers_messages_once(
    registry: LocalRegistry, first: str, container: Any,
) -> None:
    """A caller sends a client stream of 3 messages as a list (or tuple), which the mesh
    may replay, on an idempotent method; its first attempt fails ``UNAVAILABLE`` and is
    retried (or is slow, and a hedge answers). ``grpc_client_msg_sent_total`` said 6 for
    that one logical call (``grpc_client_started_total`` 1): the request wrapper counted
    every message each attempt took from the list. The ``grpc_client_*`` families are
    per logical call (as go-grpc-prometheus counts what the application sent; the
    attempts are in ``meshkit_client_attempts_total``), so it says 3: a message is
    counted by the first attempt to take it."""
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions
    from meshkit.resilience import Backoff, RetryOptions, RetryPolicy

    prom = CollectorRegistry()
    telemetry = TelemetryOptions(registry=prom, tracing=False, access_log=False)
    calls: list[int] = []
    srv = meshkit.MeshServer(
        "replayed", [_add_join(calls, first)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="r1", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=telemetry))
    await srv.start()
    policy = RetryPolicy(idempotent=True, backoff=Backoff(base_delay_s=0.001,
                                                          max_delay_s=0.002),
                         hedge_delay_s=0.2 if first == "hang" else None)
    ch = meshkit.dial("replayed", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=telemetry, outlier=None,
        retry=RetryOptions(default=policy)))
    try:
        await ch.wait_for_endpoints(1)
        answer = await ch.stream_unary(_JOIN)(container([b"a", b"b", b"c"]), timeout=20)
        assert answer == b"a,b,c"
        assert calls == [3, 3]  # the server saw the stream twice
        await until(lambda: _sample(prom, "grpc_client_handled_total",
                                    grpc_method="Join") == 1, timeout_s=10,
                    what="the call counted")
    finally:
        await ch.close()
        await srv.drain()
    assert _sample(prom, "grpc_client_started_total", grpc_method="Join") == 1
    assert _sample(prom, "meshkit_client_attempts_total", grpc_method="Join") == 2
    assert _sample(prom, "grpc_client_msg_sent_total", grpc_method="Join") == 3, \
        "the caller sent 3 messages in one logical call"


@pytest.mark.parametrize("source", [_messages, _amessages, lambda: ["a", "b", "c"]],
                         ids=["iterator", "async-iterator", "list"])
async def test_a_client_stream_counts_each_message_once(
    registry: LocalRegistry, echo_servers: EchoFactory, source: Any,
) -> None:
    """Without a retry, every message of a request iterator, an async iterator or a list
    is counted once in ``grpc_client_msg_sent_total``, call after call (a list's count is
    kept per call, not across calls of the method)."""
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions

    prom = CollectorRegistry()
    telemetry = TelemetryOptions(registry=prom, tracing=False, access_log=False)
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
            insecure=True, telemetry=telemetry, retry=None)) as ch:
        client = ch.stream_unary(method("ClientStream"),
                                 request_serializer=lambda m: m.replace("bad", "b").encode())
        for _ in range(3):
            assert await client(source(), timeout=5) == b"e1|a,b,c"
    assert _sample(prom, "grpc_client_msg_sent_total", grpc_method="ClientStream") == 9
