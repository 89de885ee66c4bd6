"""An exception a handler does not handle, against real servers. grpc.aio answers it with
``UNKNOWN`` "Unexpected <class 'X'>: <its text>", so whatever the text holds (a DSN with
its password, a query, a downstream call's peer address) reaches any caller; a meshkit
server answers ``UNKNOWN`` naming only the exception's type, and logs the whole exception
(text and traceback) on its own side, logger ``meshkit.server``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog.testing
from grpc_health.v1 import health_pb2

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import DeadlineOptions
from tests.support.echo import add_echo
from tests.support.echo import method as echo_method

_SERVICE = "errs.v1.Errs"
_SECRET = "postgres://app:hunter2@db.internal/orders"
_REDACTED_SECRET = "postgres://[REDACTED]@db.internal/orders"  # as the server's log shows it


def _m(name: str) -> str:
    return f"/{_SERVICE}/{name}"


class _Boom(RuntimeError):
    pass


async def _unary(request: bytes, context: Any) -> bytes:
    raise _Boom(f"cannot connect to {_SECRET}")


def _sync_unary(request: bytes, context: Any) -> bytes:
    raise _Boom(f"cannot connect to {_SECRET}")


async def _server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise _Boom(f"cannot connect to {_SECRET}")


async def _client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        pass
    raise _Boom(f"cannot connect to {_SECRET}")


async def _bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r
    raise _Boom(f"cannot connect to {_SECRET}")


async def _aborts(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stock is reserved")
    raise AssertionError("unreachable")


async def _sets_code(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such order")
    return b""


async def _returns_none(request: bytes, context: Any) -> Any:
    return None  # forgot the return statement


async def _not_found_none(request: bytes, context: Any) -> Any:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such order")
    return None  # the status is the answer: no message needed


async def _raises_after_abort(request: bytes, context: Any) -> bytes:
    try:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
    except grpc.aio.AbortError:
        raise _Boom(f"cleanup failed: {_SECRET}") from None
    raise AssertionError("unreachable")


async def _yields_none(request: bytes, context: Any) -> AsyncIterator[Any]:
    yield b"first"
    yield None  # a lookup that found nothing, yielded as it is


async def _bidi_yields_none(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
    async for r in requests:
        yield r if r != b"b" else None


async def _bin_trailer_text(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-note-bin", _SECRET),))  # str, not bytes
    return b"ok"


async def _non_ascii_trailer(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-note", f"caf\u00e9 {_SECRET}"),))
    return b"ok"


def _sync_bin_trailer_text(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-note-bin", _SECRET),))
    return b"ok"


async def _stream_bin_trailer_text(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    context.set_trailing_metadata((("x-note-bin", _SECRET),))


async def _raises_with_bin_trailer_text(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-note-bin", _SECRET),))
    raise _Boom("after setting trailers")


async def _good_trailers(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-note", "fine"), ("x-note-bin", b"\xff")))
    return b"ok"


async def _unavailable_with_trailers(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("retry-after-ms", "50"), ("x-note-bin", b"\xff")))
    context.set_code(grpc.StatusCode.UNAVAILABLE)  # its database connection dropped
    raise ConnectionResetError(f"connection to {_SECRET} reset")


async def _client_stream_unavailable(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        pass
    return await _unavailable_with_trailers(b"", context)


def _refusing_serializer(message: Any) -> bytes:
    raise ValueError(f"cannot encode {_SECRET}")


async def _answers(request: bytes, context: Any) -> Any:
    return {"order": "o-1"}


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "SyncUnary": grpc.unary_unary_rpc_method_handler(_sync_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Aborts": grpc.unary_unary_rpc_method_handler(_aborts),
        "SetsCode": grpc.unary_unary_rpc_method_handler(_sets_code),
        "RaisesAfterAbort": grpc.unary_unary_rpc_method_handler(_raises_after_abort),
        "BadEncoding": grpc.unary_unary_rpc_method_handler(
            _answers, response_serializer=_refusing_serializer),
        "NoneBytes": grpc.unary_unary_rpc_method_handler(_returns_none),
        "NoneProto": grpc.unary_unary_rpc_method_handler(
            _returns_none, response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
        "NotFoundNone": grpc.unary_unary_rpc_method_handler(
            _not_found_none,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
        "StreamNoneBytes": grpc.unary_stream_rpc_method_handler(_yields_none),
        "StreamNoneProto": grpc.unary_stream_rpc_method_handler(
            _yields_none, response_serializer=_proto_or_bytes),
        "BidiNone": grpc.stream_stream_rpc_method_handler(_bidi_yields_none),
        "BinTrailerText": grpc.unary_unary_rpc_method_handler(_bin_trailer_text),
        "NonAsciiTrailer": grpc.unary_unary_rpc_method_handler(_non_ascii_trailer),
        "SyncBinTrailerText": grpc.unary_unary_rpc_method_handler(_sync_bin_trailer_text),
        "StreamBinTrailerText": grpc.unary_stream_rpc_method_handler(
            _stream_bin_trailer_text),
        "RaisesWithBinTrailerText": grpc.unary_unary_rpc_method_handler(
            _raises_with_bin_trailer_text),
        "GoodTrailers": grpc.unary_unary_rpc_method_handler(_good_trailers),
        "UnavailableWithTrailers": grpc.unary_unary_rpc_method_handler(
            _unavailable_with_trailers),
        "ClientStreamUnavailable": grpc.stream_unary_rpc_method_handler(
            _client_stream_unavailable),
    }),))


def _proto_or_bytes(message: Any) -> bytes:
    """A response serializer that takes bytes as they are and else protobuf's way (what a
    generated stub's serializer does with ``None``: ``AttributeError``)."""
    return message if isinstance(message, bytes) else message.SerializeToString()  # type: ignore[no-any-return]


class _PerCall(grpc.aio.ServerInterceptor):
    """A user's interceptor that looks at each call's metadata: grpc.aio then runs the
    chain per call (meshkit cannot resolve it once per method)."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


_CONFIGS = {
    "defaults": {},
    "nothing-wraps": {"telemetry": None, "deadline": None,
                      "limits": meshkit.ServerLimits(read_requests=False)},
    "checks-only": {"telemetry": None, "deadline": DeadlineOptions()},
    "per-call-chain": {"interceptors": (_PerCall(),)},
}


async def _calls(ch: grpc.aio.Channel) -> dict[str, grpc.aio.AioRpcError]:
    """Each failing method called once: the error its caller gets, by method."""
    errors: dict[str, grpc.aio.AioRpcError] = {}

    async def req() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    calls: dict[str, Any] = {
        "Unary": lambda: ch.unary_unary(_m("Unary"))(b"x", timeout=5),
        "SyncUnary": lambda: ch.unary_unary(_m("SyncUnary"))(b"x", timeout=5),
        "ClientStream": lambda: ch.stream_unary(_m("ClientStream"))(req(), timeout=5),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        errors[name] = err.value
    for name in ("ServerStream", "Bidi"):
        stream = (ch.unary_stream(_m(name))(b"x", timeout=5) if name == "ServerStream"
                  else ch.stream_stream(_m(name))(req(), timeout=5))
        got: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for m in stream:
                got.append(m)
        assert got  # the messages before the exception arrive
        errors[name] = err.value
    return errors


@contextlib.asynccontextmanager
async def _serving(registry: LocalRegistry, **options: Any) -> AsyncIterator[grpc.aio.Channel]:
    """A plain grpc.aio channel to an ``errs`` server made with ``ServeOptions(**options)``
    (insecure, no drain delay), drained on the way out."""
    srv = meshkit.MeshServer("errs", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          **options))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            yield ch
    finally:
        await srv.drain()


@pytest.mark.parametrize("config", list(_CONFIGS))
async def test_an_unhandled_exception_reaches_the_caller_as_unknown_without_its_text(
    registry: LocalRegistry, config: str
) -> None:
    """Every call kind, however the server's chain is made up: ``UNKNOWN``, details that
    name the exception's type and not its text; the server logs the exception itself
    (text and traceback), one ``error`` event per call naming the method."""
    with structlog.testing.capture_logs() as logs:
        async with _serving(registry, **_CONFIGS[config]) as ch:
            errors = await _calls(ch)
    for name, err in errors.items():
        assert err.code() is grpc.StatusCode.UNKNOWN, name
        details = err.details() or ""
        assert _SECRET not in details and "hunter2" not in details, (name, details)
        assert "_Boom" in details, (name, details)
        assert _SECRET not in (err.debug_error_string() or ""), name
    events = [e for e in logs if e["event"] == "unhandled exception"]
    assert sorted(e["method"] for e in events) == sorted(_m(n) for n in errors), events
    for e in events:
        assert (e["log_level"], e["error_type"]) == ("error", "_Boom")
        assert isinstance(e["exc_info"], _Boom) and _SECRET in str(e["exc_info"])


class _Raising(grpc.aio.ServerInterceptor):
    """A user's interceptor with a bug: it raises before any handler runs."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        raise _Boom(f"interceptor cannot reach {_SECRET}")


async def test_an_exception_in_a_users_interceptor_is_answered_the_same(
    registry: LocalRegistry
) -> None:
    """An exception a user's ``intercept_service`` raises (grpc.aio runs the chain per
    call there) is answered as a handler's: ``UNKNOWN`` naming its type, logged with the
    method; unary and streaming calls alike, none of them left waiting."""
    with structlog.testing.capture_logs() as logs:
        async with _serving(registry, interceptors=(_Raising(),)) as ch:
            calls = {
                "Unary": ch.unary_unary(_m("Unary"))(b"x", timeout=5),
                "ServerStream": ch.unary_stream(_m("ServerStream"))(b"x", timeout=5),
                "Bidi": ch.stream_stream(_m("Bidi"))(timeout=5),
            }
            for name, call in calls.items():
                assert await call.code() is grpc.StatusCode.UNKNOWN, name
                details = await call.details() or ""
                assert "_Boom" in details and _SECRET not in details, (name, details)
    events = [e for e in logs if e["event"] == "unhandled exception"]
    assert sorted(e["method"] for e in events) == sorted(_m(n) for n in calls)
    assert all(_SECRET in str(e["exc_info"]) for e in events)


class _RaisingWhenAsked(grpc.aio.ServerInterceptor):
    """A user's interceptor that raises for calls with metadata ``fail``."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if any(k == "fail" for k, _ in details.invocation_metadata or ()):
            raise _Boom(f"interceptor cannot reach {_SECRET}")
        return await continuation(details)


def _handled(metrics: Any, name: str) -> dict[tuple[str, str], float]:
    """``grpc_server_handled_total`` of method ``name``, by ``(grpc_type, grpc_code)``."""
    out: dict[tuple[str, str], float] = {}
    for family in metrics.collect():
        for sample in family.samples:
            if (sample.name == "grpc_server_handled_total"
                    and sample.labels.get("grpc_method") == name):
                out[sample.labels["grpc_type"], sample.labels["grpc_code"]] = sample.value
    return out


@pytest.mark.parametrize("expose", [False, True])
async def test_a_call_whose_users_interceptor_raised_is_counted_by_telemetry(
    registry: LocalRegistry, expose: bool
) -> None:
    """Telemetry, outermost, counts a call whose user interceptor raised as ``Unknown``
    (what the caller gets, with or without the exception's text), labelled with the
    method's kind once a call of it was resolved, else as a bidirectional stream (the
    answering handler's kind: the method's is unknown)."""
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions

    metrics = CollectorRegistry()
    fail = (("fail", "1"),)
    async with _serving(registry, interceptors=(_RaisingWhenAsked(),),
                        expose_exception_text=expose,
                        telemetry=TelemetryOptions(registry=metrics)) as ch:
        unary = ch.unary_unary(_m("SetsCode"))
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await unary(b"x", timeout=5)  # resolved: its kind is known from now on
        assert first.value.code() is grpc.StatusCode.NOT_FOUND
        for method in ("SetsCode", "Aborts"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(_m(method))(b"x", timeout=5, metadata=fail)
            assert err.value.code() is grpc.StatusCode.UNKNOWN
            assert (_SECRET in (err.value.details() or "")) is expose
    assert _handled(metrics, "SetsCode") == {("unary", "NotFound"): 1, ("unary", "Unknown"): 1}
    assert _handled(metrics, "Aborts") == {("bidi_stream", "Unknown"): 1}


async def test_statuses_the_handler_sets_pass_unchanged(registry: LocalRegistry) -> None:
    """``context.abort`` and ``set_code``/``set_details`` are the handler's answer: sent as
    they are; so is an abort the handler raised something else after."""
    async with _serving(registry) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(_m("Aborts"))(b"x", timeout=5)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION, "stock is reserved")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(_m("SetsCode"))(b"x", timeout=5)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.NOT_FOUND, "no such order")
        # an exception after the handler's own abort: the abort's status is the answer
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(_m("RaisesAfterAbort"))(b"x", timeout=5)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.NOT_FOUND, "no such order")


@pytest.mark.parametrize("config", list(_CONFIGS))
async def test_a_unary_handler_that_returns_none_fails_internal(
    registry: LocalRegistry, config: str
) -> None:
    """A unary handler that returns ``None`` with no status set (a missing ``return``):
    grpc.aio sends an empty message for a method without a serializer (the caller reads a
    default message) and ``UNKNOWN`` with protobuf's ``TypeError`` text for one with; a
    meshkit server answers ``INTERNAL`` "the handler returned no response", as grpc-go
    answers a nil message, and logs it. ``None`` after ``set_code`` stays the status."""
    with structlog.testing.capture_logs() as logs:
        async with _serving(registry, **_CONFIGS[config]) as ch:
            for name in ("NoneBytes", "NoneProto"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(_m(name))(b"x", timeout=5)
                assert err.value.code() is grpc.StatusCode.INTERNAL, name
                assert err.value.details() == (
                    f"{_m(name)}: the handler returned no response"), name
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(_m("NotFoundNone"))(b"x", timeout=5)
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.NOT_FOUND, "no such order")
    events = [e for e in logs if e["event"] == "handler returned no response"]
    assert sorted(e["method"] for e in events) == [_m("NoneBytes"), _m("NoneProto")]


@pytest.mark.parametrize("config", list(_CONFIGS))
async def test_a_streaming_handler_that_yields_none_fails_internal(
    registry: LocalRegistry, config: str
) -> None:
    """A streaming handler that yields ``None`` (say, a lookup that found nothing): grpc.aio
    sends an empty message in its place for a method without a serializer (the caller
    reads a default message and the stream goes on) and ``UNKNOWN`` with the serializer's
    ``AttributeError`` text for one with; a meshkit server ends the stream ``INTERNAL``
    "the handler yielded None for a message" after the messages before it, as it answers
    a unary ``None``, and logs it."""
    async def req() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"
        yield b"c"

    with structlog.testing.capture_logs() as logs:
        async with _serving(registry, **_CONFIGS[config]) as ch:
            for name in ("StreamNoneBytes", "StreamNoneProto", "BidiNone"):
                stream = (ch.stream_stream(_m(name))(req(), timeout=5) if name == "BidiNone"
                          else ch.unary_stream(_m(name))(b"x", timeout=5))
                got: list[bytes] = []
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for m in stream:
                        got.append(m)
                assert got == ([b"a"] if name == "BidiNone" else [b"first"]), name
                assert err.value.code() is grpc.StatusCode.INTERNAL, name
                assert err.value.details() == (
                    f"{_m(name)}: the handler yielded None for a message"), name
    events = [e for e in logs if e["event"] == "handler yielded no message"]
    assert sorted(e["method"] for e in events) == [
        _m("BidiNone"), _m("StreamNoneBytes"), _m("StreamNoneProto")]


@pytest.mark.parametrize("config", list(_CONFIGS))
async def test_a_unary_response_the_serializer_refuses_is_answered_and_counted_alike(
    registry: LocalRegistry, config: str
) -> None:
    """A unary response the method's serializer refuses: grpc.aio serializes it after the
    handler returned, so the caller got ``UNKNOWN`` with the serializer's text while the
    server's telemetry had counted the call ``OK``. A meshkit server serializes it inside
    its wrap: an unhandled exception like any other (``UNKNOWN`` naming its type, logged),
    counted as what the caller got."""
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions

    metrics = CollectorRegistry()
    kw = dict(_CONFIGS[config])
    if kw.get("telemetry", True) is not None:
        kw["telemetry"] = TelemetryOptions(registry=metrics)
    with structlog.testing.capture_logs() as logs:
        async with _serving(registry, **kw) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(_m("BadEncoding"))(b"x", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as not_found:
                await ch.unary_unary(_m("NotFoundNone"))(b"x", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNKNOWN
    assert err.value.details() == "Unexpected ValueError in the handler (logged by the server)"
    assert not_found.value.code() is grpc.StatusCode.NOT_FOUND  # None, a status: no encoding
    if kw.get("telemetry") is not None:  # counted where telemetry runs
        for code in ("OK", "Unknown"):
            counted = metrics.get_sample_value("grpc_server_handled_total", {
                "grpc_service": _SERVICE, "grpc_method": "BadEncoding", "grpc_type": "unary",
                "grpc_code": code}) or 0
            assert counted == (1 if code == "Unknown" else 0), code
    (event,) = [e for e in logs if e["event"] == "unhandled exception"]
    assert event["method"] == _m("BadEncoding") and _SECRET in str(event["exc_info"])


@pytest.mark.parametrize("config", list(_CONFIGS))
async def test_trailing_metadata_grpc_cannot_send_is_answered_internal_and_counted(
    registry: LocalRegistry, config: str
) -> None:
    """A handler that returns after setting trailing metadata gRPC cannot send: a ``str``
    under a ``-bin`` key left the call open until its deadline (grpc.aio's send of the
    status raised), a value that is not printable ASCII got the caller ``INTERNAL``
    "Invalid metadata" while telemetry counted ``OK``. A meshkit server answers both
    ``INTERNAL`` naming the key, never the value, and counts what the caller got; a
    handler that raises after setting such metadata is answered as for any unhandled
    exception, without it (it was left open too); trailing metadata that can be sent
    arrives as set."""
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions

    metrics = CollectorRegistry()
    kw = dict(_CONFIGS[config])
    if kw.get("telemetry", True) is not None:
        kw["telemetry"] = TelemetryOptions(registry=metrics)
    errors: dict[str, grpc.aio.AioRpcError] = {}
    async with _serving(registry, **kw) as ch:
        for name in ("BinTrailerText", "NonAsciiTrailer", "SyncBinTrailerText"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(ch.unary_unary(_m(name))(b"x", timeout=3), 5)
            errors[name] = err.value
        stream = ch.unary_stream(_m("StreamBinTrailerText"))(b"x", timeout=3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            assert [m async for m in stream] == [b"first"]
        errors["StreamBinTrailerText"] = err.value
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(ch.unary_unary(_m("RaisesWithBinTrailerText"))(
                b"x", timeout=3), 5)
        call = ch.unary_unary(_m("GoodTrailers"))(b"x", timeout=3)
        assert await call == b"ok"
        assert list(await call.trailing_metadata()) == [("x-note", "fine"),
                                                       ("x-note-bin", b"\xff")]
    # an exception after setting them: answered as any other (the trailers dropped)
    assert raised.value.code() is grpc.StatusCode.UNKNOWN, raised.value
    for name, e in errors.items():
        key = "x-note" if name == "NonAsciiTrailer" else "x-note-bin"
        assert e.code() is grpc.StatusCode.INTERNAL, (name, e)
        assert f"trailing metadata key {key!r}" in (e.details() or ""), (name, e.details())
        assert _SECRET not in (e.details() or "") and "hunter2" not in str(e), name
        if kw.get("telemetry") is not None:
            kind = "server_stream" if name.startswith("Stream") else "unary"
            counted = {code: metrics.get_sample_value("grpc_server_handled_total", {
                "grpc_service": _SERVICE, "grpc_method": name, "grpc_type": kind,
                "grpc_code": code}) for code in ("OK", "Internal")}
            assert counted == {"OK": None, "Internal": 1.0}, (name, counted)


async def test_expose_exception_text_keeps_grpc_aio_s_details(registry: LocalRegistry) -> None:
    """``ServeOptions(expose_exception_text=True)`` (a development server): the details
    are grpc.aio's own, the exception's text included."""
    async with _serving(registry, expose_exception_text=True) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(_m("Unary"))(b"x", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNKNOWN
    assert _SECRET in (err.value.details() or "")



@pytest.mark.parametrize("downstream", ["unary", "stream", "own-timeout"])
async def test_a_propagated_deadline_run_out_under_a_margin_is_answered_deadline_exceeded(
        registry: LocalRegistry, downstream: str) -> None:
    """A handler's outgoing call runs under the incoming call's deadline less
    ``DialOptions.deadline_margin_s``. When that deadline ran out and the downstream's
    ``DEADLINE_EXCEEDED`` escaped the handler, the server answered ``UNKNOWN``
    "Unexpected AioRpcError in the handler": it took a downstream ``DEADLINE_EXCEEDED``
    for this call's own only with under 50 ms of the call left, i.e. only without a
    margin, so the margin a user sets to leave time for a proper answer got the caller
    the wrong status (and alerts or retries keyed on it misfired). Now the mesh channel
    marks the error of a call that ran under the propagated deadline and ran it out, and
    the server answers ``DEADLINE_EXCEEDED`` (details naming no downstream), a margin
    before the caller's own timer: a unary call, or a stream's read. A handler's call
    with its own shorter timeout that ran out is still ``UNKNOWN`` (the caller's
    deadline did not run out)."""
    echo = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, instance_id="e1",
                                                           drain_delay_s=0.0, grace_s=1.0))
    await echo.start()
    down = meshkit.dial("echo", registry=registry,
                        options=meshkit.DialOptions(insecure=True, deadline_margin_s=1.0))

    async def front(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if downstream == "unary":  # no timeout of its own: the propagated one
            return await down.unary_unary(echo_method("Sleep"))(b"30000")  # type: ignore[no-any-return]
        if downstream == "stream":
            call = down.stream_stream(echo_method("Bidi"))()
            await call.read()  # nothing written: no answer before the deadline
            raise AssertionError("unreachable")
        return await down.unary_unary(echo_method("Sleep"))(  # type: ignore[no-any-return]
            b"30000", timeout=0.5)

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "errs.v1.Front", {"Call": grpc.unary_unary_rpc_method_handler(front)}),))

    srv = meshkit.MeshServer("front", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="f1",
                                                          drain_delay_s=0.0, grace_s=1.0))
    await srv.start()
    try:
        await asyncio.wait_for(down.wait_for_endpoints(1), 10)
        async with meshkit.dial("front", registry=registry,
                                options=meshkit.DialOptions(insecure=True, retry=None)) as ch:
            await asyncio.wait_for(ch.wait_for_endpoints(1), 10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                # the propagated deadline runs out after 1 s, its 1 s margin before the
                # caller's own
                await asyncio.wait_for(ch.unary_unary("/errs.v1.Front/Call")(b"", timeout=2.0),
                                       10)
        code, details = info.value.code(), info.value.details() or ""
        if downstream == "own-timeout":
            assert code is grpc.StatusCode.UNKNOWN, (code, details)
            assert details.startswith("Unexpected AioRpcError"), details
        else:
            # the server's answer (the caller's own timer says "Deadline Exceeded")
            assert code is grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
            assert details == "deadline exceeded (in a call the handler made under it)", details
    finally:
        await down.close()
        await srv.drain()
        await echo.drain()

_REQUEST_STREAMS = frozenset({"ClientStream", "Bidi", "ClientStreamUnavailable"})


async def _on_the_wire(ch: grpc.aio.Channel, name: str) -> tuple[Any, ...]:
    """What a client sees of a failing call of method ``name``, read as a response stream
    whatever the method's kind (any client can; it shows every message the server sent):
    the messages, the status code, its details and the trailing metadata."""

    async def req() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    call = (ch.stream_stream(_m(name))(req(), timeout=5) if name in _REQUEST_STREAMS
            else ch.unary_stream(_m(name))(b"x", timeout=5))
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for message in call:
            got.append(message)
    trailers = tuple((k, v) for k, v in err.value.trailing_metadata() or ())
    return got, err.value.code(), err.value.details() or "", trailers


@pytest.mark.parametrize("config", list(_CONFIGS))
async def test_an_unhandled_exception_is_answered_trailers_only(
        registry: LocalRegistry, config: str, caplog: pytest.LogCaptureFixture) -> None:
    """A client reads what a ``meshkit.serve()`` server sends for a handler that raised,
    of each call kind (a unary response read as a stream: any client can, and it shows
    the response's messages), beside grpc.aio's own server with the same handlers.

    Before (2058ed3 answered by setting the status and returning ``None`` from the wrap):
    a unary-response method sent one empty message (b"") before its status, where
    grpc.aio's server (and meshkit before 2058ed3) sends the status alone, Trailers-Only.
    Proxies acting on the first message saw a successful response start (Envoy's
    gRPC-JSON transcoder has sent HTTP 200 with ``{}``) and gRFC A6 clients committed the
    call. Now the same wire answer as grpc.aio's for all four kinds (no message for a
    unary response; a stream's messages before the exception), the same code (the one
    the handler set before raising, else ``UNKNOWN``) and trailing metadata; the details
    name the exception's type only."""
    caplog.set_level(logging.CRITICAL + 1, logger="grpc._cython.cygrpc")
    names = ("Unary", "SyncUnary", "ClientStream", "ServerStream", "Bidi",
             "UnavailableWithTrailers", "ClientStreamUnavailable")
    plain = grpc.aio.server()
    _add(None, plain)
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            expected = {name: await _on_the_wire(ch, name) for name in names}
    finally:
        await plain.stop(None)
    async with _serving(registry, **_CONFIGS[config]) as ch:
        got = {name: await _on_the_wire(ch, name) for name in names}
    for name in names:
        messages, code, details, trailers = got[name]
        error = "ConnectionResetError" if "Unavailable" in name else "_Boom"
        assert details == f"Unexpected {error} in the handler (logged by the server)", name
        assert (messages, code, trailers) == (
            expected[name][0], expected[name][1], expected[name][3]), name
    assert got["Unary"][0] == [] and got["ClientStream"][0] == []
    assert got["UnavailableWithTrailers"][1:] == (
        grpc.StatusCode.UNAVAILABLE,
        "Unexpected ConnectionResetError in the handler (logged by the server)",
        (("retry-after-ms", "50"), ("x-note-bin", b"\xff")))


_FLAKY = "errs.v1.Flaky"
_RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": _FLAKY}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def _flaky(attempts: list[int]) -> grpc.GenericRpcHandler:
    """Service ``Flaky``, a method of each kind: the first call of the server fails as a
    handler does when its database connection dropped (sets ``UNAVAILABLE``, then the
    driver's exception escapes, before any response), the calls after answer."""

    def fail(context: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            raise ConnectionResetError("database connection reset")

    async def unary(request: bytes, context: Any) -> bytes:
        fail(context)
        return b"ok:" + request

    async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        fail(context)
        yield b"ok:" + request

    async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        got = b"".join([r async for r in requests])
        fail(context)
        return b"ok:" + got

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        got = b"".join([r async for r in requests])
        fail(context)
        yield b"ok:" + got

    return grpc.method_handlers_generic_handler(_FLAKY, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi)})


async def _call_flaky(ch: grpc.aio.Channel, kind: str) -> Any:
    """One call of ``Flaky``'s method ``kind``: its answer, or the status code it failed
    with."""
    name = f"/{_FLAKY}/{kind}"
    try:
        if kind == "Unary":
            return await ch.unary_unary(name)(b"x", timeout=10)
        if kind == "ClientStream":
            return await ch.stream_unary(name)(iter([b"x"]), timeout=10)
        call = (ch.unary_stream(name)(b"x", timeout=10) if kind == "ServerStream"
                else ch.stream_stream(name)(iter([b"x"]), timeout=10))
        return [m async for m in call]
    except grpc.aio.AioRpcError as e:
        return e.code()


@pytest.mark.parametrize("config", ["defaults", "nothing-wraps"])
@pytest.mark.parametrize("kind", ["Unary", "ServerStream", "ClientStream", "Bidi"])
async def test_a_failed_call_stays_retryable_by_a_grpc_client_with_a_retry_policy(
        registry: LocalRegistry, caplog: pytest.LogCaptureFixture, kind: str,
        config: str) -> None:
    """A plain gRPC client (grpc C-core here; grpc-java and grpc-go behave alike) with a
    service-config ``retryPolicy`` for ``UNAVAILABLE`` calls a ``meshkit.serve()`` server
    whose handler set ``UNAVAILABLE`` and then raised (its database connection dropped);
    the next attempt would succeed.

    Before (2058ed3), for a unary-response method the server sent response headers, an
    empty message and the status: a response message commits the call (gRFC A6), so the
    client gave up after one attempt and its caller saw ``UNAVAILABLE``. Now the status
    alone (Trailers-Only), as grpc.aio's own server and meshkit before 2058ed3: the call
    is retried and succeeds, for every call kind."""
    caplog.set_level(logging.CRITICAL + 1, logger="grpc._cython.cygrpc")
    plain_attempts: list[int] = []
    mesh_attempts: list[int] = []
    plain = grpc.aio.server()
    plain.add_generic_rpc_handlers((_flaky(plain_attempts),))
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((_flaky(mesh_attempts),))

    mesh = meshkit.MeshServer("flaky", [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                           **_CONFIGS[config]))
    await mesh.start()
    answers: dict[str, Any] = {}
    try:
        for name, server_port in (("grpc.aio", port), ("meshkit", mesh.port)):
            async with grpc.aio.insecure_channel(
                    f"127.0.0.1:{server_port}",
                    options=[("grpc.service_config", _RETRY_CONFIG)]) as ch:
                answers[name] = await asyncio.wait_for(_call_flaky(ch, kind), 30)
    finally:
        await mesh.drain()
        await plain.stop(None)
    ok = b"ok:x" if kind in ("Unary", "ClientStream") else [b"ok:x"]
    assert answers["grpc.aio"] == ok, answers  # the baseline: retried
    assert answers["meshkit"] == ok, (answers, len(mesh_attempts))
    assert len(mesh_attempts) == 2


_JSON_PROCESS = """
import asyncio, sys
import grpc
import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import configure_logging
from tests.test_handler_errors import _add, _m

async def main() -> None:
    if sys.argv[2] == "json":
        configure_logging("info", json=True)
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=1.0, poll_interval_s=0.05))
    srv = meshkit.MeshServer("errs", [(_add, None)], registry=reg, options=meshkit.ServeOptions(
        insecure=True, drain_delay_s=0, grace_s=1.0))
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        try:
            await ch.unary_unary(_m("Unary"))(b"x", timeout=5)
        except grpc.aio.AioRpcError as exc:
            print(exc.code().name, exc.details())
    await srv.drain()
    await reg.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("logs", ["json", "unconfigured"])
def test_the_server_log_holds_the_exception_with_its_traceback(
        tmp_path: Path, logs: str) -> None:
    """Under ``configure_logging(json=True)`` the server's line is one JSON object: event
    ``unhandled exception``, ``method``, ``error_type`` and an ``exception`` field holding
    the traceback (a URL's user info in it redacted). Unconfigured, the line and its
    traceback reach stderr through the
    standard library (nothing on stdout). The caller printed UNKNOWN without the text."""
    proc = subprocess.run([sys.executable, "-c", _JSON_PROCESS, str(tmp_path / "r"), logs],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("UNKNOWN Unexpected _Boom"), proc.stdout
    assert proc.stdout.count("\n") == 1 and _SECRET not in proc.stdout
    assert "Unexpected [" not in proc.stderr  # grpc.aio logged nothing of its own
    if logs == "unconfigured":
        assert "unhandled exception" in proc.stderr and _m("Unary") in proc.stderr
        # the text with the URL's user info redacted (2afced2e): the password never logged
        assert "Traceback" in proc.stderr and _REDACTED_SECRET in proc.stderr
        assert "hunter2" not in proc.stderr
        return
    lines = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    errs = [ln for ln in lines if ln.get("event") == "unhandled exception"]
    assert len(errs) == 1, proc.stderr
    err = errs[0]
    assert (err["level"], err["method"], err["error_type"]) == ("error", _m("Unary"), "_Boom")
    assert err["exception"].startswith("Traceback") and _REDACTED_SECRET in err["exception"]
    assert "hunter2" not in proc.stderr


def _count(metrics: Any, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(sample.value for family in metrics.collect() for sample in family.samples
               if sample.name == name
               and all(sample.labels.get(k) == v for k, v in labels.items()))


async def _slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(30)
    return b"late"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["unary", "server-stream"])
async def test_a_downstream_deadline_answered_deadline_exceeded_is_reported_so(
        registry: LocalRegistry, kind: str) -> None:
    """Hop 1's handler calls a slow hop 2 under the propagated deadline less
    ``DialOptions.deadline_margin_s`` (0.15 s); the outgoing call runs that out and its
    ``DEADLINE_EXCEEDED`` escapes the handler: hop 1 answers ``DEADLINE_EXCEEDED``
    "deadline exceeded (in a call the handler made under it)" (the caller sees that), but
    its own telemetry said ``UNKNOWN``: ``grpc_server_handled_total{grpc_code="Unknown"}``,
    span and access line alike, as the reporter finished the call before the unhandled
    exception's answer was decided. Now the answer is decided first and every record
    says what was sent, ``DEADLINE_EXCEEDED``; and its log line (at ``debug``, no
    traceback: ``deadline ran out in a call the handler made``) is logged under the
    call's span (its trace and span ids), as documented."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions
    from meshkit.observability._logging import add_trace_context
    from tests.support.wait import until

    metrics, exporter, provider = CollectorRegistry(), InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    down = meshkit.dial("hop2", registry=registry, options=meshkit.DialOptions(
        insecure=True, retry=None, deadline_margin_s=0.15))

    async def unary(request: bytes, context: Any) -> Any:
        return await down.unary_unary("/hop2/Slow")(b"")

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        yield await down.unary_unary("/hop2/Slow")(b"")

    def service(name: str, handlers: dict[str, Any]) -> tuple[Any, None]:
        def add(_servicer: Any, server: Any) -> None:
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(name, handlers),))
        return add, None

    started: list[meshkit.MeshServer] = []
    try:
        async with asyncio.timeout(30):
            for name, handlers, telemetry in (
                    ("hop2", {"Slow": grpc.unary_unary_rpc_method_handler(_slow)}, None),
                    ("hop1", {"Unary": grpc.unary_unary_rpc_method_handler(unary),
                              "Stream": grpc.unary_stream_rpc_method_handler(stream)},
                     TelemetryOptions(registry=metrics, tracer_provider=provider))):
                srv = meshkit.MeshServer(name, [service(name, handlers)], registry=registry,
                                         options=meshkit.ServeOptions(
                                             insecure=True, drain_delay_s=0.0, grace_s=0.5,
                                             telemetry=telemetry))
                await srv.start()
                started.append(srv)
            await down.wait_for_endpoints(1)
            async with meshkit.dial("hop1", registry=registry, options=meshkit.DialOptions(
                    insecure=True, retry=None)) as ch:
                await ch.wait_for_endpoints(1)
                with structlog.testing.capture_logs(processors=[add_trace_context]) as logs, \
                        pytest.raises(grpc.aio.AioRpcError) as info:
                    if kind == "unary":
                        await ch.unary_unary("/hop1/Unary")(b"", timeout=1.0)
                    else:
                        async for _ in ch.unary_stream("/hop1/Stream")(b"", timeout=1.0):
                            pass
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert info.value.details() == \
                "deadline exceeded (in a call the handler made under it)"
            method = "Unary" if kind == "unary" else "Stream"

            def counted() -> float:
                return _count(metrics, "grpc_server_handled_total", grpc_service="hop1",
                              grpc_method=method)

            await until(lambda: counted() >= 1 and len(exporter.get_finished_spans()) >= 1,
                        what="hop 1's count and span of the call")
    finally:
        await down.close()
        for srv in reversed(started):
            await srv.drain()
        provider.shutdown()
    by_code = {code: _count(metrics, "grpc_server_handled_total", grpc_service="hop1",
                            grpc_method=method, grpc_code=code)
               for code in ("DeadlineExceeded", "Unknown")}
    assert by_code == {"DeadlineExceeded": 1.0, "Unknown": 0.0}, by_code
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    # the caller's deadline ran out down the chain: an outcome, logged at debug only
    # (no error with a traceback per call under overload), under the call's span
    assert not [e for e in logs if e["event"] == "unhandled exception"], logs
    (line,) = [e for e in logs if e["event"] == "deadline ran out in a call the handler made"]
    assert (line["method"], line["error_type"], line["log_level"]) == (
        f"/hop1/{method}", "AioRpcError", "debug")
    assert "exc_info" not in line
    assert line.get("trace_id") == format(span.context.trace_id, "032x"), line
    assert line.get("span_id") == format(span.context.span_id, "016x"), line
