"""A plain-function handler's ``context.abort()`` with trailing metadata gRPC cannot send.

grpc.aio's ``abort`` marks the call answered (``status_sent``) before it encodes the
trailers; a ``str`` value under a ``-bin`` key then makes the encoding raise
``TypeError``, nothing is sent, and nothing else may be: the call stayed open until the
caller's deadline (for ever without one), holding its call slot. That is so whether the
trailers were given to ``abort`` or set before with ``set_trailing_metadata`` (``abort``
sends those when given none), and through ``abort_with_status``. (A value that is not
printable ASCII was answered ``INTERNAL`` "Invalid metadata" by grpc core, the handler's
code lost, a message a meshkit client takes for its own refusal.)

A plain-function handler's context is meshkit's own (:class:`meshkit._handlers._SyncContext`):
its ``abort`` now checks the trailers first and answers such a call ``INTERNAL`` naming
the key (never the value), as a handler's unsendable ``set_trailing_metadata`` is
answered when it returns. An ``async def`` handler's context is grpc.aio's, which
meshkit does not wrap (see README, "Errors and status codes")."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry

_SECRET = "s3cr3t-value"


def _given(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope", (("x-why-bin", _SECRET),))
    return b"unreached"


def _set_before(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-why-bin", _SECRET),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope")
    return b"unreached"


def _with_status(request: bytes, context: Any) -> bytes:
    class _Status(grpc.Status):
        code = grpc.StatusCode.FAILED_PRECONDITION
        details = "nope"
        trailing_metadata = (("x-why-bin", _SECRET),)

    context.abort_with_status(_Status())
    return b"unreached"


def _not_ascii(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope", (("x-why", "caf\u00e9"),))
    return b"unreached"


def _sendable(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope",
                  (("x-why", "v"), ("x-why-bin", b"\x00")))
    return b"unreached"


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Abort", {
        name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in (
            ("Given", _given), ("SetBefore", _set_before), ("WithStatus", _with_status),
            ("NotAscii", _not_ascii), ("Sendable", _sendable))}),))


@pytest.mark.timeout(60)
async def test_a_sync_abort_with_unsendable_trailers_is_answered_internal(
    registry: LocalRegistry,
) -> None:
    srv = meshkit.MeshServer("aborter", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for name, key in (("Given", "x-why-bin"), ("SetBefore", "x-why-bin"),
                              ("WithStatus", "x-why-bin"), ("NotAscii", "x-why")):
                began = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/t.Abort/{name}")(b"x", timeout=5)
                assert err.value.code() is grpc.StatusCode.INTERNAL, (name, err.value)
                assert f"'{key}'" in (err.value.details() or ""), (name, err.value)
                assert _SECRET not in (err.value.details() or ""), name
                assert time.monotonic() - began < 4, name  # answered, not timed out
            # trailers it can send go out with the handler's own status
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.Abort/Sendable")(b"x", timeout=5)
            assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert err.value.details() == "nope"
            assert ("x-why", "v") in tuple(err.value.trailing_metadata() or ())
    finally:
        await srv.drain()
