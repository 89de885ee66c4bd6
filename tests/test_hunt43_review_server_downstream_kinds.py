"""The downstream-refusal answer (e927beae, 18e0f478, 1b7ac353) on every handler kind and
server option: a middle tier whose handler lets a downstream call's ``UNAVAILABLE`` or
``RESOURCE_EXHAUSTED`` escape answers ``RESOURCE_EXHAUSTED`` "a call the handler made
was refused (<CODE>)" with the trailer ``meshkit-downstream-status: <CODE>``, and
telemetry counts that code: unary and streaming in and out, ``async def`` and plain
functions, streams that raise after their first message; with telemetry, without any
check, with the call slots instead of the request gate, with handler threads, with a
send limit, with a user's interceptor, exposing exception text, with a rate limiter
(which refused none of them: ``meshkit_server_rate_limited_total`` stays 0). The
downstream's details and trailers are not passed on; its ``DEADLINE_EXCEEDED`` (a
timeout of the handler's own) and ``CANCELLED`` stay ``UNKNOWN``; a code the handler set
stays the answer; a message size limit's ``RESOURCE_EXHAUSTED`` too (review fault).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RateLimitOptions

_DOWN = "hunt43r.Down"
_MID = "hunt43r.Mid"
_SECRET = "redis://:hunter2@10.0.0.9:6379"
_TRAILER = "meshkit-downstream-status"

_DOWN_CODES = {
    "StorageDown": grpc.StatusCode.UNAVAILABLE,
    "Busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Cancelled": grpc.StatusCode.CANCELLED,
}


async def _down(request: bytes, context: Any) -> bytes:
    which = request.decode()
    if which == "Slow":
        import asyncio
        await asyncio.sleep(20)
        return b"late"
    await context.abort(_DOWN_CODES[which], f"refused: {_SECRET}",
                        trailing_metadata=(("x-down-secret", "hunter2"),))
    raise AssertionError("unreachable")


def _which(context: Any) -> str:
    which: str = dict(context.invocation_metadata() or ()).get("which", "StorageDown")
    return which


def _timeout(which: str) -> float:
    return 0.2 if which == "Slow" else 10.0  # Slow: the handler's own short timeout


def _handlers(target: str) -> dict[str, Any]:
    """The middle tier's methods, by name: each calls the downstream (its request names
    what the downstream answers) and lets the error escape; the streaming ones after
    sending a first message."""

    async def call_async(which: str) -> bytes:
        async with grpc.aio.insecure_channel(target) as raw:
            ch: Any = raw
            answer: bytes = await ch.unary_unary(f"/{_DOWN}/Call")(
                which.encode(), timeout=_timeout(which))
            return answer

    def call_sync(which: str) -> bytes:
        with grpc.insecure_channel(target) as raw:
            ch: Any = raw
            answer: bytes = ch.unary_unary(f"/{_DOWN}/Call")(
                which.encode(), timeout=_timeout(which))
            return answer

    async def a_uu(request: bytes, context: Any) -> bytes:
        return await call_async(_which(context))

    async def a_us(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        yield await call_async(_which(context))

    async def a_su(requests: Any, context: Any) -> bytes:
        async for _ in requests:
            pass
        return await call_async(_which(context))

    async def a_ss(requests: Any, context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield b"first"
        yield await call_async(_which(context))

    def s_uu(request: bytes, context: Any) -> bytes:
        return call_sync(_which(context))

    def s_us(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        yield call_sync(_which(context))

    def s_su(requests: Any, context: Any) -> bytes:
        for _ in requests:
            pass
        return call_sync(_which(context))

    def s_ss(requests: Any, context: Any) -> Iterator[bytes]:
        for _ in requests:
            yield b"first"
        yield call_sync(_which(context))

    async def a_writes(request: bytes, context: Any) -> None:
        await context.write(b"first")  # a streaming coroutine answering with write()
        await context.write(await call_async(_which(context)))

    async def a_sets_code(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        yield await call_async(_which(context))

    def s_sets_code(request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        return call_sync(_which(context))

    return {
        "AUnary": grpc.unary_unary_rpc_method_handler(a_uu),
        "AServerStream": grpc.unary_stream_rpc_method_handler(a_us),
        "AClientStream": grpc.stream_unary_rpc_method_handler(a_su),
        "ABidi": grpc.stream_stream_rpc_method_handler(a_ss),
        "SUnary": grpc.unary_unary_rpc_method_handler(s_uu),
        "SServerStream": grpc.unary_stream_rpc_method_handler(s_us),
        "SClientStream": grpc.stream_unary_rpc_method_handler(s_su),
        "SBidi": grpc.stream_stream_rpc_method_handler(s_ss),
        "AWritesServerStream": grpc.unary_stream_rpc_method_handler(a_writes),
        "ASetsCode": grpc.unary_stream_rpc_method_handler(a_sets_code),
        "SSetsCode": grpc.unary_unary_rpc_method_handler(s_sets_code),
    }


_KINDS = ("AUnary", "AServerStream", "AClientStream", "ABidi", "AWritesServerStream",
          "SUnary", "SServerStream", "SClientStream", "SBidi")
_TYPES = {"Unary": "unary", "ServerStream": "server_stream",
          "ClientStream": "client_stream", "Bidi": "bidi_stream"}


def _type(name: str) -> str:
    return next(t for k, t in _TYPES.items() if name.endswith(k))


class _PassThrough(grpc.aio.ServerInterceptor):
    """A user's interceptor (after meshkit's chain) that changes nothing."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


@contextlib.asynccontextmanager
async def _tiers(registry: LocalRegistry, prom: CollectorRegistry,
                 **options: Any) -> AsyncIterator[grpc.aio.Channel]:
    down = grpc.aio.server()
    down.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_DOWN, {
        "Call": grpc.unary_unary_rpc_method_handler(_down)}),))
    port = down.add_insecure_port("127.0.0.1:0")
    await down.start()
    handlers = _handlers(f"127.0.0.1:{port}")

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_MID, handlers),))

    options.setdefault("telemetry", TelemetryOptions(registry=prom, tracing=False))
    try:
        mid = meshkit.MeshServer("mid", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, drain_delay_s=0, grace_s=1.0,
                                     **options))
        await mid.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mid.port}") as ch:
                yield ch
        finally:
            await mid.drain()
    finally:
        await down.stop(None)


async def _call(ch: Any, name: str, which: str) -> tuple[Any, list[bytes]]:
    """The error of a call of ``name`` whose downstream answers ``which``, and the
    messages received before it."""
    md = (("which", which),)
    got: list[bytes] = []
    path = f"/{_MID}/{name}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if name.endswith("ServerStream") or name == "ASetsCode":
            async for m in ch.unary_stream(path)(b"x", timeout=15, metadata=md):
                got.append(m)
        elif name.endswith("ClientStream"):
            await ch.stream_unary(path)(iter([b"r"]), timeout=15, metadata=md)
        elif name.endswith("Bidi"):
            async for m in ch.stream_stream(path)(iter([b"r"]), timeout=15, metadata=md):
                got.append(m)
        else:
            await ch.unary_unary(path)(b"x", timeout=15, metadata=md)
    return err.value, got


_CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "nothing-wraps": {"telemetry": None, "deadline": None,
                      "limits": meshkit.ServerLimits(read_requests=False)},
    "call-slots": {"limits": meshkit.ServerLimits(read_requests=False,
                                                  max_concurrent_rpcs=16)},
    "handler-threads": {"handler_threads": 4},
    "send-limit": {"server_options": (("grpc.max_send_message_length", 1 << 20),)},
    "user-interceptor": {"interceptors": (_PassThrough(),)},
    "exposing": {"expose_exception_text": True},
    # the middle tier's own limiter passes every call: its count must stay 0
    "rate-limit": {"rate_limit": RateLimitOptions(default_rule="10000/second")},
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("config", list(_CONFIGS), ids=list(_CONFIGS))
async def test_every_kind_answers_an_escaped_downstream_refusal_resource_exhausted(
        registry: LocalRegistry, config: str) -> None:
    prom = CollectorRegistry()
    async with _tiers(registry, prom, **_CONFIGS[config]) as ch:
        for name in _KINDS:
            for which, code in (("StorageDown", "UNAVAILABLE"),
                                ("Busy", "RESOURCE_EXHAUSTED")):
                err, got = await _call(ch, name, which)
                where = (name, which, err.code(), err.details())
                assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, where
                assert err.details() == f"a call the handler made was refused ({code})", where
                trailers = tuple(err.trailing_metadata() or ())
                assert (_TRAILER, code) in trailers, (where, trailers)
                assert "x-down-secret" not in {k for k, _ in trailers}, (where, trailers)
                if name.endswith(("ServerStream", "Bidi")):
                    assert got == [b"first"], (where, got)  # sent before the refusal
        if config != "nothing-wraps":
            for name in _KINDS:
                counted = prom.get_sample_value("grpc_server_handled_total", {
                    "grpc_service": _MID, "grpc_method": name,
                    "grpc_type": _type(name), "grpc_code": "ResourceExhausted"})
                assert counted == 2.0, (name, counted)
                # the middle tier's rate limiter refused nothing
                limited = prom.get_sample_value("meshkit_server_rate_limited_total", {
                    "grpc_service": _MID, "grpc_method": name})
                assert limited == 0.0, (name, limited)
                in_flight = prom.get_sample_value("grpc_server_in_flight", {
                    "grpc_service": _MID, "grpc_method": name,
                    "grpc_type": _type(name)})
                assert in_flight == 0.0, (name, in_flight)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("config", ["defaults", "exposing"], ids=["defaults", "exposing"])
async def test_a_downstream_deadline_or_cancel_and_a_code_set_stay_as_they_were(
        registry: LocalRegistry, config: str) -> None:
    """The handler's own short timeout run out downstream, a downstream ``CANCELLED``:
    ``UNKNOWN`` as before, no trailer; a code the handler set before the refusal escaped
    (a stream after its first message, a plain function's): that code."""
    prom = CollectorRegistry()
    async with _tiers(registry, prom, **_CONFIGS[config]) as ch:
        for name in ("AUnary", "SUnary", "AServerStream", "SBidi"):
            for which in ("Slow", "Cancelled"):
                err, _ = await _call(ch, name, which)
                assert err.code() is grpc.StatusCode.UNKNOWN, (name, which, err.details())
                keys = {k for k, _ in err.trailing_metadata() or ()}
                assert _TRAILER not in keys, (name, which, keys)
        for name in ("ASetsCode", "SSetsCode"):
            err, _ = await _call(ch, name, "StorageDown")
            assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, (name, err.details())
            keys = {k for k, _ in err.trailing_metadata() or ()}
            assert _TRAILER not in keys, (name, keys)


async def _big_down(request: bytes, context: Any) -> bytes:
    if request == b"big-answer":
        return b"y" * 8192  # over the middle tier's receive limit
    return b"ok"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("limit", ["downstream-receive", "own-send", "own-receive"],
                         ids=["downstream-receive", "own-send", "own-receive"])
async def test_a_message_size_refusal_of_a_call_the_handler_made_stays_unknown(
        registry: LocalRegistry, limit: str) -> None:
    """A ``RESOURCE_EXHAUSTED`` that is a message size limit (grpc's "message larger
    than max": the handler's request over the downstream's receive limit or its own
    channel's send limit, the downstream's answer over its own receive limit) is no
    refusal to serve now but this server's request or limit, the same on every endpoint:
    as an ``INVALID_ARGUMENT`` downstream, answered ``UNKNOWN`` as before, with no
    ``meshkit-downstream-status`` (not "a call the handler made was refused", which
    caller-side balancers read as overload of this server)."""
    down = grpc.aio.server(options=(("grpc.max_receive_message_length", 1024),))
    down.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_DOWN, {
        "Call": grpc.unary_unary_rpc_method_handler(_big_down)}),))
    port = down.add_insecure_port("127.0.0.1:0")
    await down.start()
    channel_options = {"downstream-receive": (),
                       "own-send": (("grpc.max_send_message_length", 512),),
                       "own-receive": (("grpc.max_receive_message_length", 1024),)}[limit]
    request = b"big-answer" if limit == "own-receive" else b"x" * 4096

    async def relay(_request: bytes, context: Any) -> bytes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=channel_options) as raw:
            ch: Any = raw
            answer: bytes = await ch.unary_unary(f"/{_DOWN}/Call")(request, timeout=10)
            return answer

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_MID, {
            "Relay": grpc.unary_unary_rpc_method_handler(relay)}),))

    try:
        mid = meshkit.MeshServer("mid", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, drain_delay_s=0, grace_s=1.0,
                                     telemetry=None))
        await mid.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mid.port}") as raw:
                ch: Any = raw
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/{_MID}/Relay")(b"", timeout=15)
        finally:
            await mid.drain()
    finally:
        await down.stop(None)
    assert err.value.code() is grpc.StatusCode.UNKNOWN, err.value.details()
    keys = {k for k, _ in err.value.trailing_metadata() or ()}
    assert _TRAILER not in keys, keys
