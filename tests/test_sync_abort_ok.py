"""A plain-function handler's ``context.abort(grpc.StatusCode.OK, ...)`` answers the call.

``abort`` is for ending a call with an error; given ``OK``, grpc.aio marks the call
answered and sends nothing, so the caller waited until its deadline (for ever without
one), holding the call's slot. gRPC's synchronous server, whose handlers a plain-function
handler is ported from, answers such a call ``UNKNOWN`` (and logs it): meshkit's
synchronous context now does so, for ``abort`` and ``abort_with_status`` alike, the
handler's details kept. (An ``async def`` handler's context is grpc.aio's own.)"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry


def _abort(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.OK, "done early")
    return b"unreached"


def _abort_int(request: bytes, context: Any) -> bytes:
    context.abort(0, "done early")
    return b"unreached"


def _with_status(request: bytes, context: Any) -> bytes:
    class _Status(grpc.Status):
        code = grpc.StatusCode.OK
        details = "done early"
        trailing_metadata = ()

    context.abort_with_status(_Status())
    return b"unreached"


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Ok", {
        "Abort": grpc.unary_unary_rpc_method_handler(_abort),
        "AbortInt": grpc.unary_unary_rpc_method_handler(_abort_int),
        "WithStatus": grpc.unary_unary_rpc_method_handler(_with_status)}),))


@pytest.mark.timeout(60)
async def test_a_sync_abort_with_ok_is_answered_unknown(registry: LocalRegistry) -> None:
    srv = meshkit.MeshServer("okd", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for name in ("Abort", "AbortInt", "WithStatus"):
                began = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/t.Ok/{name}")(b"x", timeout=5)
                assert err.value.code() is grpc.StatusCode.UNKNOWN, (name, err.value)
                assert "done early" in (err.value.details() or ""), (name, err.value)
                assert time.monotonic() - began < 4, name  # answered, not timed out
    finally:
        await srv.drain()
