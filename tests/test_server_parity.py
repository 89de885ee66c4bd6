"""Parity of handlers served by meshkit with the same handlers on a plain grpc.aio server,
side by side on loopback: what a plain grpc.aio server answers, a meshkit server answers
(its own documented differences aside: an unhandled exception's text stays on the server,
an undecodable request is INVALID_ARGUMENT)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.wait import until

_SERVICE = "parity.v1.Parity"


def _m(name: str) -> str:
    return f"/{_SERVICE}/{name}"


@contextlib.asynccontextmanager
async def _side_by_side(
    registry: LocalRegistry, handlers: dict[str, grpc.RpcMethodHandler], *,
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
    server_options: tuple[tuple[str, Any], ...] = (), **options: Any,
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    """A plain grpc.aio server and a meshkit server (``serve()`` defaults plus
    ``options``) serving the same ``handlers`` (with the same user ``interceptors`` and
    grpc ``server_options``); yields a channel to each: ``(plain, mesh)``."""
    plain = grpc.aio.server(interceptors=interceptors or None, options=server_options)
    plain.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers),))

    mesh = meshkit.MeshServer("parity", [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
                                  interceptors=interceptors, server_options=server_options,
                                  **options))
    await mesh.start()
    plain_ch = grpc.aio.insecure_channel(f"127.0.0.1:{plain_port}")
    mesh_ch = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}")
    try:
        yield plain_ch, mesh_ch
    finally:
        await plain_ch.close()
        await mesh_ch.close()
        await plain.stop(None)
        await mesh.drain()


async def _unary_status(ch: grpc.aio.Channel, name: str, request: bytes = b"x"
                        ) -> tuple[grpc.StatusCode, str]:
    call = ch.unary_unary(_m(name))(request, timeout=5)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call
    return await call.code(), await call.details()


async def _server_stream_status(ch: grpc.aio.Channel, name: str
                                ) -> tuple[grpc.StatusCode, list[bytes]]:
    call = ch.unary_stream(_m(name))(b"x", timeout=5)
    got: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for r in call:
            got.append(r)
    return await call.code(), got


# -- 1. set_code() then raise: grpc.aio keeps the code the handler set ------------------------
class _OrderMissing(LookupError):
    pass


async def _not_found_then_raise(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    raise _OrderMissing("order 7")


async def _stream_not_found_then_raise(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    context.set_code(grpc.StatusCode.NOT_FOUND)
    raise _OrderMissing("order 7")


async def test_a_status_code_set_before_an_exception_is_kept_as_grpc_aio_keeps_it(
    registry: LocalRegistry,
) -> None:
    """A handler that calls ``context.set_code(NOT_FOUND)`` and then raises gets
    ``NOT_FOUND`` from a plain grpc.aio server: its ``_handle_exceptions`` says "Allows users
    to raise other types of exception with specified status code" and answers ``UNKNOWN``
    only while the code is still OK. meshkit's README promises "`set_code()`/`set_details()`
    pass unchanged" and ``UnhandledErrorInterceptor``'s docstring "What the handler answers
    itself is left alone: ... ``set_code``/``set_details``"; ``expose_exception_text`` is
    documented to change only the details text ("send an unhandled exception's text to the
    caller, as grpc.aio does"). Expected: ``NOT_FOUND`` from both servers, for unary and
    server-streaming handlers (the caller's retry/handling logic keys on the code), as a
    meshkit server with ``expose_exception_text=True`` does answer. meshkit answered
    ``UNKNOWN`` with its default options, so the code depended on whether exception text
    is exposed."""
    handlers = {
        "Get": grpc.unary_unary_rpc_method_handler(_not_found_then_raise),
        "List": grpc.unary_stream_rpc_method_handler(_stream_not_found_then_raise),
    }
    async with _side_by_side(registry, handlers) as (plain, mesh):
        plain_code, _ = await _unary_status(plain, "Get")
        mesh_code, mesh_details = await _unary_status(mesh, "Get")
        assert plain_code is grpc.StatusCode.NOT_FOUND
        assert mesh_code is plain_code, (mesh_code, mesh_details)
        plain_s = await _server_stream_status(plain, "List")
        mesh_s = await _server_stream_status(mesh, "List")
        assert plain_s == (grpc.StatusCode.NOT_FOUND, [b"first"])
        assert mesh_s == plain_s


# -- 2. a user's interceptor is handed the guard's "undecodable" sentinel as the request ---------
class _FieldLogging(grpc.aio.ServerInterceptor):
    """A typical user interceptor: wraps unary-unary behaviours to read a request field
    (logging, tenancy, validation) before calling the handler."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        inner = handler.unary_unary

        async def logged(request: Any, context: Any) -> Any:
            self.seen.append(type(request).__name__)
            _ = request.service  # e.g. put a field of the request in the log
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            logged, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


async def _check(request: health_pb2.HealthCheckRequest, context: Any
                 ) -> health_pb2.HealthCheckResponse:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def test_an_undecodable_request_never_reaches_a_users_interceptor(
    registry: LocalRegistry,
) -> None:
    """``ServeOptions``' docstring: "Every server answers a request that does not decode
    with ``INVALID_ARGUMENT`` 'request is not a valid <Type>'"; README: your own
    ``interceptors`` run after the mesh's checks and see the call's request. On a plain
    grpc.aio server an undecodable unary request never reaches any Python code of the
    call (the interceptor's wrapped behaviour is not run: ``seen`` stays empty). Expected
    on meshkit: ``INVALID_ARGUMENT`` and the user's wrapped behaviour not run with a
    non-message. The guarded deserializer's sentinel (``_Undecodable``) was passed to the
    user's interceptor behaviour as the request; reading a field raised and the caller got
    ``UNKNOWN`` "Unexpected AttributeError in the handler" (an authorization interceptor
    reading ``request.tenant`` would crash the same way)."""
    handlers = {"Check": grpc.unary_unary_rpc_method_handler(
        _check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString)}
    plain_icpt, mesh_icpt = _FieldLogging(), _FieldLogging()
    plain_srv = grpc.aio.server(interceptors=(plain_icpt,))
    plain_srv.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    port = plain_srv.add_insecure_port("127.0.0.1:0")
    await plain_srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            code, _ = await _unary_status(plain, "Check", b"\xff\xff\xff")
        assert code is grpc.StatusCode.UNKNOWN  # grpc.aio: DecodeError, no Python code ran
        assert plain_icpt.seen == []
    finally:
        await plain_srv.stop(None)
    async with _side_by_side(registry, handlers, interceptors=(mesh_icpt,)) as (_, mesh):
        ok = await mesh.unary_unary(_m("Check"))(b"", timeout=5)
        assert health_pb2.HealthCheckResponse.FromString(ok).status == 1
        assert mesh_icpt.seen == ["HealthCheckRequest"]
        code, details = await _unary_status(mesh, "Check", b"\xff\xff\xff")
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "request is not a valid grpc.health.v1.HealthCheckRequest"), details
        assert mesh_icpt.seen == ["HealthCheckRequest"], mesh_icpt.seen


# -- 3. a unary response is serialized even when a non-OK status was set ----------------------
def _order_class() -> Any:
    """A proto2 message ``parity.v1.Order`` with ``required int64 id = 1``: an empty one does
    not serialize (``EncodeError`` "missing required fields")."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="parity_order.proto", package="parity.v1",
                                             syntax="proto2")
    msg = fdp.message_type.add(name="Order")
    msg.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("parity.v1.Order"))


_Order = _order_class()


async def _not_found_with_empty_order(request: bytes, context: Any) -> Any:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no order 7")
    return _Order()  # the usual "empty response" of an error path; its id is unset


async def test_a_response_returned_after_set_code_is_discarded_not_serialized(
    registry: LocalRegistry,
) -> None:
    """grpc.aio's ``_finish_handler_with_unary_response``: "Discards the response message if
    the status code is non-OK" (it serializes only when ``status_code == StatusCode.ok``),
    so a handler that calls ``set_code(NOT_FOUND)``/``set_details`` and returns an empty
    response answers ``NOT_FOUND`` "no order 7", even when that empty response would not
    serialize (a proto2 message with a ``required`` field unset). README: "`context.abort()`
    and `set_code()`/`set_details()` pass unchanged". Expected the same from meshkit, which
    moved unary serialization into its wrap. The wrap serialized the response
    whatever the code (``meshkit/_handlers.py`` ``_reported``/``_checked``: ``ser(result)``),
    the serializer's ``EncodeError`` is answered as an unhandled exception, and the caller
    gets ``UNKNOWN`` "Unexpected EncodeError in the handler" instead of the status the
    handler set."""
    handlers = {"Get": grpc.unary_unary_rpc_method_handler(
        _not_found_with_empty_order, response_serializer=_Order.SerializeToString)}
    async with _side_by_side(registry, handlers) as (plain, mesh):
        expected = (grpc.StatusCode.NOT_FOUND, "no order 7")
        assert await _unary_status(plain, "Get") == expected
        assert await _unary_status(mesh, "Get") == expected


# -- 4. the server's send limit (grpc.max_send_message_length) -------------------------------
_SV = wrappers_pb2.StringValue
_SEND_LIMIT = (("grpc.max_send_message_length", 1000),)


async def _written_stream(request: Any, context: Any) -> None:
    await context.write(_SV(value="first:" + request.value))
    await context.write(_SV(value="second"))


async def _written_bidi(requests: Any, context: Any) -> None:
    async for request in requests:
        await context.write(_SV(value="echo:" + request.value))


async def _mixed_stream(request: Any, context: Any) -> AsyncIterator[Any]:
    await context.write(_SV(value="written"))
    yield _SV(value="yielded")


async def _written_answers(ch: grpc.aio.Channel, name: str
                           ) -> tuple[grpc.StatusCode, list[str]]:
    if name == "WrittenBidi":
        async def requests() -> AsyncIterator[Any]:
            yield _SV(value="x")

        call: Any = ch.stream_stream(_m(name), request_serializer=_SV.SerializeToString,
                                     response_deserializer=_SV.FromString)(
            requests(), timeout=5)
    else:
        call = ch.unary_stream(_m(name), request_serializer=_SV.SerializeToString,
                               response_deserializer=_SV.FromString)(_SV(value="x"), timeout=5)
    got: list[str] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for msg in call:
            got.append(msg.value)
    return await call.code(), got


@pytest.mark.parametrize("name", ["WrittenStream", "WrittenBidi", "MixedStream"])
async def test_context_write_keeps_the_response_serializer_under_a_send_limit(
    registry: LocalRegistry, name: str,
) -> None:
    """A streaming handler answering with ``await context.write(message)`` (grpc.aio's
    way for a coroutine handler, also allowed beside ``yield``) failed every call
    ``UNKNOWN`` "Unexpected TypeError" ("Expected bytes, got StringValue") as soon as the
    server had ``grpc.max_send_message_length`` in ``server_options``: with the limit,
    the wrap serializes yielded messages itself and handed grpc the handler without the
    method's response serializer, so a written message reached grpc unserialized. A
    plain grpc.aio server with the same option answers them; now meshkit does too (the
    README: messages sent with ``context.write`` "are still left to grpc core")."""
    handlers = {
        "WrittenStream": grpc.unary_stream_rpc_method_handler(
            _written_stream, request_deserializer=_SV.FromString,
            response_serializer=_SV.SerializeToString),
        "WrittenBidi": grpc.stream_stream_rpc_method_handler(
            _written_bidi, request_deserializer=_SV.FromString,
            response_serializer=_SV.SerializeToString),
        "MixedStream": grpc.unary_stream_rpc_method_handler(
            _mixed_stream, request_deserializer=_SV.FromString,
            response_serializer=_SV.SerializeToString),
    }
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT) as (plain, mesh):
        expected = await _written_answers(plain, name)
        assert expected[0] is grpc.StatusCode.OK  # the baseline
        assert await _written_answers(mesh, name) == expected


async def _not_found_with_big_response(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such order")
    return b"\0" * 5000  # discarded by grpc.aio: the status is not OK


@pytest.mark.parametrize("expose", [False, True])
async def test_a_status_set_by_the_handler_is_kept_with_a_response_over_the_send_limit(
    registry: LocalRegistry, expose: bool,
) -> None:
    """A unary handler that sets ``NOT_FOUND`` (``set_code``/``set_details``) and returns
    a response over the server's ``grpc.max_send_message_length`` reached the caller
    ``RESOURCE_EXHAUSTED`` "Sent message larger than max": the wrap serialized and
    size-checked the response before looking at the status set. grpc.aio discards the
    response of a non-OK call unserialized, so a plain server answers ``NOT_FOUND`` "no
    such order"; so does meshkit now, with either ``expose_exception_text`` setting (as
    it already did for a response its serializer refuses)."""
    handlers = {"NotFound": grpc.unary_unary_rpc_method_handler(_not_found_with_big_response)}
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT,
                             expose_exception_text=expose) as (plain, mesh):
        expected = await _unary_status(plain, "NotFound")
        assert expected == (grpc.StatusCode.NOT_FOUND, "no such order")  # the baseline
        assert await _unary_status(mesh, "NotFound") == expected


async def _big_response(request: bytes, context: Any) -> bytes:
    return b"\0" * 5000


async def test_a_unary_response_over_the_send_limit_is_counted_so_with_expose_exception_text(
    registry: LocalRegistry,
) -> None:
    """With ``expose_exception_text=True``, a unary response over the server's
    ``grpc.max_send_message_length`` reached the caller ``RESOURCE_EXHAUSTED`` (from grpc
    core) while ``grpc_server_handled_total`` counted it ``OK``: the wrap serialized and
    checked a unary response only when the unhandled-exception answer was installed. The
    README: such a response "is answered ``RESOURCE_EXHAUSTED`` there and counted so";
    now it is, with either setting."""
    metrics = CollectorRegistry()
    handlers = {"Big": grpc.unary_unary_rpc_method_handler(_big_response)}
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT,
                             expose_exception_text=True,
                             telemetry=TelemetryOptions(registry=metrics, tracing=False)
                             ) as (_plain, mesh):
        code, _ = await _unary_status(mesh, "Big")
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED

        def handled(code: str) -> float:
            return metrics.get_sample_value("grpc_server_handled_total", {
                "grpc_service": _SERVICE, "grpc_method": "Big", "grpc_type": "unary",
                "grpc_code": code}) or 0.0

        await until(lambda: handled("OK") + handled("ResourceExhausted") >= 1,
                    timeout_s=5, what="the call counted")
        assert (handled("OK"), handled("ResourceExhausted")) == (0.0, 1.0)


async def _none_response(request: bytes, context: Any) -> Any:
    return None


async def test_a_unary_none_under_a_send_limit_with_expose_exception_text_is_grpc_aios(
    registry: LocalRegistry,
) -> None:
    """A unary handler returning ``None`` on a server with a send limit and
    ``expose_exception_text=True`` (which leaves ``None`` to grpc.aio) is answered as a
    plain grpc.aio server answers it: an empty message without a response serializer,
    ``UNKNOWN`` with the serializer's exception with one (now that the wrap serializes
    such a response to check its size)."""
    handlers = {
        "Raw": grpc.unary_unary_rpc_method_handler(_none_response),
        "Proto": grpc.unary_unary_rpc_method_handler(
            _none_response, response_serializer=_SV.SerializeToString),
    }
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT,
                             expose_exception_text=True) as (plain, mesh):
        assert await plain.unary_unary(_m("Raw"))(b"x", timeout=5) == b""  # the baseline
        assert await mesh.unary_unary(_m("Raw"))(b"x", timeout=5) == b""
        code, details = await _unary_status(plain, "Proto")
        assert code is grpc.StatusCode.UNKNOWN  # the baseline
        assert await _unary_status(mesh, "Proto") == (code, details)


async def _big_proto_stream(request: Any, context: Any) -> AsyncIterator[Any]:
    yield _SV(value="small")
    yield _SV(value="x" * 5000)  # 5003 bytes serialized


async def _stream_status(ch: grpc.aio.Channel, name: str
                         ) -> tuple[grpc.StatusCode, str | None, list[bytes]]:
    call = ch.unary_stream(_m(name))(b"x", timeout=5)
    got: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for m in call:
            got.append(m)
    return await call.code(), await call.details(), got


async def test_the_send_limit_details_are_grpc_cores(registry: LocalRegistry) -> None:
    """A response over the server's ``grpc.max_send_message_length`` was answered
    ``RESOURCE_EXHAUSTED`` "Sent message larger than max (5000 vs. 1000)" by meshkit's
    wrap, where grpc core (a plain grpc.aio server) answers "SERVER: Sent message larger
    than max (5000 vs. 1000)" (its "CLIENT: ..." one is the channel's refusal), though
    ``ResponseTooLarge`` promised grpc core's own message; now the texts are the same, for
    a unary response and a streamed one (with and without a response serializer)."""
    handlers = {"Big": grpc.unary_unary_rpc_method_handler(_big_response),
                "BigProtoStream": grpc.unary_stream_rpc_method_handler(
                    _big_proto_stream, response_serializer=_SV.SerializeToString)}
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT) as (plain, mesh):
        expected = await _unary_status(plain, "Big")
        assert expected == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "SERVER: Sent message larger than max (5000 vs. 1000)")
        assert await _unary_status(mesh, "Big") == expected
        expected_s = await _stream_status(plain, "BigProtoStream")
        assert expected_s == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "SERVER: Sent message larger than max (5003 vs. 1000)",
                              [_SV(value="small").SerializeToString()])
        assert await _stream_status(mesh, "BigProtoStream") == expected_s
