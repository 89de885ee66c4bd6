"""A bidi stream whose write met the server's early end: grpc.aio (1.85, grpc/grpc#36066)
sets its own ``INTERNAL`` "Internal error from Core" as the call's status and the server's
status comes only once the responses are read; the channel holds the attempt's end
meanwhile (``meshkit._calls._HeldEnd``). Three faults of the call objects there, met as a
user meets them (a real ``MeshServer`` on loopback, ``meshkit.dial()``):

* ``code()`` (``details()``, ``trailing_metadata()``) asked right after the last message,
  before reading ``EOF``, read grpc.aio's stand-in ``INTERNAL`` in 20 of 20 streams whose
  server ended ``OK`` or ``PERMISSION_DENIED`` (plain grpc.aio without the stand-in: the
  server's status, 20 of 20: its ``code()`` awaits the call's end);
* a stream dropped with its end held was released (counted, its core call cancelled)
  only at the next garbage collection, not as its call object was freed;
* a response the deserializer refused there raised ``ResponseDeserializationError`` at the
  caller while ``code()`` and telemetry read the server's ``OK``: the refusal's cancel of
  the attempt was a no-op on a call grpc.aio reports done.

Every wait is bounded; counts allow for the streams whose writes all got in before the end.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from meshkit.errors import ResponseDeserializationError
from tests.support.held_end import ServedStack, answer_once, write_all
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

APP = "meshkit.test.H3Held"
_STREAMS = 20
_OK = grpc.StatusCode.OK
_DENIED = grpc.StatusCode.PERMISSION_DENIED


async def _answer_then_deny(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield b"one"
        context.set_trailing_metadata((("why", "no-grant"),))
        await context.abort(_DENIED, "no grant")


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                APP,
                {
                    "Once": grpc.stream_stream_rpc_method_handler(answer_once),
                    "Deny": grpc.stream_stream_rpc_method_handler(_answer_then_deny),
                },
            ),
        )
    )


class _Stack(ServedStack):
    def __init__(self, registry: LocalRegistry) -> None:
        super().__init__(registry, "h3held", _add, "h1")

    def handled(self, method: str) -> dict[str, float]:
        """Every non-zero ``grpc_client_handled_total`` count of ``method``, by code."""
        out = {}
        for code in ("OK", "PermissionDenied", "Internal", "Canceled", "Unknown"):
            n = self.handled_count(APP, method, code)
            if n:
                out[code] = n
        return out


async def _last_message(call: Any, style: str) -> Any:
    """The stream's one answer, read as ``style`` says, ``EOF`` not read."""
    if style == "read":
        return await call.read()
    async for m in call:
        return m
    return None


@pytest.mark.parametrize("method", ["Once", "Deny"])
@pytest.mark.parametrize("style", ["read", "iterate"])
async def test_the_status_asked_after_the_last_message_is_the_servers(
    registry: LocalRegistry, method: str, style: str
) -> None:
    """``code()``, ``details()`` and ``trailing_metadata()`` asked right after the last
    message, before ``EOF``, give the server's status (they await it, as grpc.aio's do),
    not grpc.aio's stand-in; the stream is counted with that status."""
    stack = _Stack(registry)
    want = (_OK, "", ()) if method == "Once" else (_DENIED, "no grant", (("why", "no-grant"),))
    async with stack as ch:
        met = 0
        seen = []
        for _ in range(_STREAMS):
            call = ch.stream_stream(f"/{APP}/{method}")(timeout=10)
            met += await write_all(call)
            assert await _last_message(call, style) == b"one"
            # asked at once (asyncio.wait_for's task would give the status a turn)
            code = await call.code()
            details = await call.details()
            trailers = await call.trailing_metadata()
            seen.append((code, details, tuple((k, v) for k, v in trailers if k == "why")))
        assert seen == [want] * _STREAMS, seen
        assert met >= _STREAMS // 3, met
        name = "OK" if method == "Once" else "PermissionDenied"
        await until(
            lambda: sum(stack.handled(method).values()) >= _STREAMS,
            timeout_s=20,
            what="the streams counted",
        )
        assert stack.handled(method) == {name: _STREAMS}


async def test_code_awaited_before_the_reads_is_the_servers_once_they_are_done(
    registry: LocalRegistry,
) -> None:
    """``code()`` awaited before the responses are read waits for the reads (as grpc.aio's
    ``code()`` waits for a stream's end) and gives the server's ``OK``, not the stand-in."""
    async with _Stack(registry) as ch:
        met = 0
        codes = []
        for _ in range(_STREAMS):
            call = ch.stream_stream(f"/{APP}/Once")(timeout=10)
            met += await write_all(call)
            asked = asyncio.ensure_future(call.code())
            await asyncio.sleep(0.01)
            assert [m async for m in call] == [b"one"]
            codes.append(await asyncio.wait_for(asked, 10))
        assert codes == [_OK] * _STREAMS, codes
        assert met >= _STREAMS // 3, met


async def test_a_stream_dropped_with_its_end_held_is_counted_without_a_collection(
    registry: LocalRegistry,
) -> None:
    """A stream dropped unread after its write met the end is released as its call object
    is freed (counted ``Canceled``, nothing in flight), with the cyclic collector off."""
    stack = _Stack(registry)
    async with stack as ch:
        call = ch.stream_stream(f"/{APP}/Once")(timeout=30)
        await write_all(call)
        assert [m async for m in call] == [b"one"]
        del call
        await until(lambda: sum(stack.handled("Once").values()) >= 1, timeout_s=20, what="one")
        gc.collect()
        await asyncio.sleep(0.2)
        tasks_before = len(asyncio.all_tasks())
        dropped = read = 0
        gc.disable()
        try:
            for _ in range(_STREAMS):
                call = ch.stream_stream(f"/{APP}/Once")(timeout=30)
                if await write_all(call):
                    dropped += 1  # dropped unread, its end held
                else:
                    assert [m async for m in call] == [b"one"]
                    read += 1
                del call
            assert dropped >= _STREAMS // 3, dropped
            await until(
                lambda: sum(stack.handled("Once").values()) >= 1 + _STREAMS,
                timeout_s=20,
                what=f"the dropped streams counted: {stack.handled('Once')}, {dropped} dropped",
            )
            # no task left per dropped stream (grpc.aio's own, waiting for the status)
            await until(
                lambda: len(asyncio.all_tasks()) <= tasks_before + 3,
                timeout_s=20,
                what=f"the tasks ended: {tasks_before} -> {len(asyncio.all_tasks())}",
            )
        finally:
            gc.enable()
        assert stack.handled("Once") == {"OK": 1 + read, "Canceled": dropped}
        in_flight = stack.client.get_sample_value(
            "grpc_client_in_flight",
            {"grpc_service": APP, "grpc_method": "Once", "grpc_type": "bidi_stream"},
        )
        assert in_flight == 0


def _refuse(data: bytes) -> bytes:
    raise ValueError("not this one")


@pytest.mark.parametrize("style", ["read", "iterate"])
async def test_a_refused_answer_after_the_end_is_internal_everywhere(
    registry: LocalRegistry, style: str
) -> None:
    """A response the deserializer refuses, read after a write met the server's end:
    the reader's ``ResponseDeserializationError`` (``INTERNAL``) is also ``code()``'s
    and telemetry's, as for any refused message, not the server's ``OK``."""
    stack = _Stack(registry)
    async with stack as ch:
        met = 0
        seen = []
        for _ in range(_STREAMS):
            call = ch.stream_stream(f"/{APP}/Once", response_deserializer=_refuse)(timeout=10)
            met += await write_all(call)
            with pytest.raises(ResponseDeserializationError):
                await _last_message(call, style)
            seen.append(await call.code())
        assert seen == [grpc.StatusCode.INTERNAL] * _STREAMS, seen
        assert met >= _STREAMS // 3, met
        await until(
            lambda: sum(stack.handled("Once").values()) >= _STREAMS,
            timeout_s=20,
            what=f"the streams counted: {stack.handled('Once')}",
        )
        assert stack.handled("Once") == {"Internal": _STREAMS}
