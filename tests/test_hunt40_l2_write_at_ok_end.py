"""A bidi stream's ``write()`` in flight as its server ended the call ``OK`` early (the
handler answered after the first message and returned while the caller still wrote) raised
``AioRpcError`` ``INTERNAL`` "Internal error from Core" at the caller in 100 of 100 streams
(plain grpc.aio too: its write's failure is seen before the server's status, which grpc.aio
then stands in for with that ``INTERNAL`` until the responses are read), although the
server's status was ``OK``: grpc-go's ``SendMsg`` returns ``io.EOF`` there and grpc-js's
write fails quietly, the final status being the server's. Now such a write raises
``asyncio.InvalidStateError`` "RPC already finished." (the message was not sent, as the
next write's, and as an upload's write in flight at its end), its status being the reads'
and ``code()``'s: ``OK``; a write the status came before is the same for an ``OK`` end,
and raises the status for an error end (unchanged). Under ``attempt_interceptors``
(grpc.aio's intercepted call) the writes did not meet that ``INTERNAL`` before: that case
guards the parity."""

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

_ROUNDS = 40


async def _answer_once(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield b"one"
        return


async def _upload_once(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        return b"one"
    return b"none"


async def _deny_after_one(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no grant")
    yield b""  # (a generator: never reached)


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "t.S",
        {
            "Once": grpc.stream_stream_rpc_method_handler(_answer_once),
            "UpOnce": grpc.stream_unary_rpc_method_handler(_upload_once),
            "DenyAfterOne": grpc.stream_stream_rpc_method_handler(_deny_after_one),
        },
    )


class _PassOn(grpc.aio.StreamStreamClientInterceptor):
    """An attempt interceptor that passes every call on (grpc.aio's intercepted calls)."""

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(details, request_iterator)


async def _write_all(call: Any) -> Any:
    """Write 50 messages of 1 KiB and half-close; what the writes raised."""
    try:
        for _ in range(50):
            await call.write(b"x" * 1024)
        await call.done_writing()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    except asyncio.InvalidStateError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("intercepted", [False, True], ids=["plain", "attempt-interceptor"])
async def test_a_write_in_flight_at_an_ok_end_is_not_an_internal_error(
    registry: LocalRegistry, intercepted: bool
) -> None:
    async with raw_server(_handlers()) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(
            insecure=True,
            retry=None,
            telemetry=None,
            attempt_interceptors=(_PassOn(),) if intercepted else (),
        )
        async with meshkit.dial("s", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            seen: dict[str, list[Any]] = {"bidi": [], "upload": [], "deny": []}
            for _ in range(_ROUNDS):
                call = ch.stream_stream("/t.S/Once")(timeout=10)
                wrote = await _write_all(call)
                got = [m async for m in call]
                seen["bidi"].append((wrote, got, await call.code(), await call.details()))
                up = ch.stream_unary("/t.S/UpOnce")(timeout=10)
                wrote = await _write_all(up)
                seen["upload"].append((wrote, await up, await up.code()))
                call = ch.stream_stream("/t.S/DenyAfterOne")(timeout=10)
                wrote = await _write_all(call)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [m async for m in call]
                seen["deny"].append((wrote, info.value.code(), await call.code()))
            finished = "RPC already finished."
            ok = grpc.StatusCode.OK
            # (None: every write was taken before the end came, as now and then)
            for wrote, *outcome in seen["bidi"]:
                assert wrote in (None, finished), seen["bidi"]
                assert outcome == [[b"one"], ok, ""], seen["bidi"]
            for wrote, *outcome in seen["upload"]:
                assert wrote in (None, finished), seen["upload"]
                assert outcome == [b"one", ok], seen["upload"]
            denied = grpc.StatusCode.PERMISSION_DENIED
            for wrote, code, final in seen["deny"]:
                # the status once it came before the write's failure, else as an OK end's
                assert wrote in (None, finished, denied), seen["deny"]
                assert (code, final) == (denied, denied), seen["deny"]
