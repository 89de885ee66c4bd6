"""A request stream whose server ended the call while the caller's request iterator was
still being written (the server aborted, answered early, or is a wrong server refusing an
unknown method) reached its caller as ``INTERNAL`` "Internal error from Core" most of the
time, not with the server's status: grpc.aio (1.85) replaces a call's status with that
``INTERNAL`` when a write in flight as the call ended fails after the status arrived
(grpc/grpc#36066). A bidi stream whose handler aborted ``PERMISSION_DENIED`` was reported
``INTERNAL`` in ~90 of 100 calls, one its server ended ``OK`` after one answer in ~half of
them (its caller lost the ``OK``). The channel now stops grpc.aio's request writer as the
call ends (nothing can be sent to an ended call), so the server's status stays the
call's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import raw_server

pytestmark = pytest.mark.timeout(120)

_ROUNDS = 25


async def _deny(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    context.set_trailing_metadata((("why", "no-grant"),))
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no grant")
    yield b""  # (a generator: never reached)


async def _answer_once(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield b"one"
        return


async def _deny_upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no grant")
    raise AssertionError("unreachable")


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("t.S", {
        "Deny": grpc.stream_stream_rpc_method_handler(_deny),
        "Once": grpc.stream_stream_rpc_method_handler(_answer_once),
        "DenyUpload": grpc.stream_unary_rpc_method_handler(_deny_upload)})


async def _many() -> AsyncIterator[bytes]:
    for _ in range(50):
        yield b"x" * 1024


class _PassOn(grpc.aio.StreamStreamClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """An attempt interceptor that passes every call on (the sub-channels' calls are then
    grpc.aio's intercepted call objects, as under an OpenTelemetry instrumentor)."""

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await continuation(details, request_iterator)

    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(details, request_iterator)


@pytest.mark.parametrize(("telemetry", "intercepted"), [
    (False, False), (True, False), (False, True)],
    ids=["plain", "telemetry", "attempt-interceptor"])
async def test_the_servers_status_of_a_request_stream_it_ended_early_is_the_callers(
        registry: LocalRegistry, telemetry: bool, intercepted: bool) -> None:
    async with raw_server(_handlers()) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1",
                                         port=port))
        opts = meshkit.DialOptions(insecure=True, retry=None,
                                   attempt_interceptors=(_PassOn(),) if intercepted else (),
                                   **({} if telemetry else {"telemetry": None}))
        async with meshkit.dial("s", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            seen: dict[str, list[Any]] = {"deny": [], "once": [], "upload": [],
                                          "unknown": []}
            for _ in range(_ROUNDS):
                call = ch.stream_stream("/t.S/Deny")(_many(), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [m async for m in call]
                seen["deny"].append((info.value.code(), info.value.details(),
                                     tuple(info.value.trailing_metadata() or ())))
                assert await call.code() is info.value.code()
                call = ch.stream_stream("/t.S/Once")(_many(), timeout=10)
                try:
                    seen["once"].append([m async for m in call])
                except grpc.aio.AioRpcError as exc:
                    seen["once"].append((exc.code(), exc.details()))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ch.stream_unary("/t.S/DenyUpload")(_many(), timeout=10)
                seen["upload"].append((info.value.code(), info.value.details()))
                call = ch.stream_stream("/t.S/Missing")(_many(), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [m async for m in call]
                seen["unknown"].append((info.value.code(), info.value.details()))
            denied = (grpc.StatusCode.PERMISSION_DENIED, "no grant")
            assert seen["deny"] == [(*denied, (("why", "no-grant"),))] * _ROUNDS, seen
            assert seen["once"] == [[b"one"]] * _ROUNDS, seen
            assert seen["upload"] == [denied] * _ROUNDS, seen
            assert seen["unknown"] == [(grpc.StatusCode.UNIMPLEMENTED,
                                        "Method not found!")] * _ROUNDS, seen


async def _write_all(call: Any) -> Any:
    """Write 50 messages and half-close, as a caller of the ``write()`` style does; what
    the writes raised (an exception's type and status, if any)."""
    try:
        for _ in range(50):
            await call.write(b"x" * 1024)
        await call.done_writing()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    except asyncio.InvalidStateError:
        return "finished"
    return None


@pytest.mark.parametrize("intercepted", [False, True], ids=["plain", "attempt-interceptor"])
async def test_the_servers_status_of_a_written_stream_it_ended_early_is_the_callers(
        registry: LocalRegistry, intercepted: bool) -> None:
    """The same for a bidi stream whose caller writes its messages (``write()``): grpc.aio
    replaced the status when the caller's own write was in flight (49 of 50 streams
    denied at once read ``INTERNAL``); the status the server sent is kept as it arrives
    and given back wherever grpc.aio reports that ``INTERNAL`` (the write in flight, the
    reads, ``code()``, ``details()``, the trailers)."""
    async with raw_server(_handlers()) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1",
                                         port=port))
        opts = meshkit.DialOptions(insecure=True, retry=None, telemetry=None,
                                   attempt_interceptors=(_PassOn(),) if intercepted else ())
        async with meshkit.dial("s", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            denied = (grpc.StatusCode.PERMISSION_DENIED, "no grant")
            for _ in range(_ROUNDS):
                call = ch.stream_stream("/t.S/Deny")(timeout=10)
                wrote = await _write_all(call)
                assert wrote in (None, "finished", grpc.StatusCode.PERMISSION_DENIED), wrote
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [m async for m in call]
                assert (info.value.code(), info.value.details()) == denied
                assert (await call.code(), await call.details()) == denied
                assert tuple(await call.trailing_metadata()) == (("why", "no-grant"),)
                call = ch.stream_stream("/t.S/Once")(timeout=10)
                # (a write in flight whose failure grpc.aio sees before the server's OK
                # end raises its INTERNAL, the call's status not yet come: left as it is)
                wrote = await _write_all(call)
                assert wrote in (None, "finished", grpc.StatusCode.INTERNAL), wrote
                assert [m async for m in call] == [b"one"]
                assert await call.code() is grpc.StatusCode.OK
