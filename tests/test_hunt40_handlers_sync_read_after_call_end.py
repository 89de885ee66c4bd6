"""A plain-function handler that reads its request stream after its call ended leaks
nothing.

A synchronous (``def``) handler iterates its requests in a thread; meshkit reads each
message on the loop (``_blocking_requests``). Once the call has ended (its caller
cancelled, its deadline passed) grpc core refuses a new read batch for it, and grpc.aio's
``_receive_message`` then reads that refusal as the stream's end but leaves the batch's
future, and the ``CallbackWrapper`` holding it (a reference of its own, dropped only
when the batch completes), in memory for good. A handler still iterating when its caller
left (a slow upload consumer, a bidi generator that yields between reads) leaked one of
each per cut call: a long-lived server's memory grew with every cancelled upload. Now no
read is started for a call that has ended: the iterator raises
:class:`meshkit.errors.RequestStreamCutError` at once, as it did after the refused read.

Measured as the growth of grpc's ``CallbackWrapper`` objects over ``N`` and ``2 N`` such
calls: one per call before the fix, none after.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance
from meshkit.errors import RequestStreamCutError
from tests.support.registries import QueueRegistry
from tests.support.wait import until

_SVC = "hunt40.v1.Cut"
_N = 30  # calls per round: a leak of one object per call shows as 30 and 60


class _Handlers:
    """Plain-function handlers that read one request, wait for their call to end, then
    read on (what a handler slower than its caller does); ``got`` is set at the first
    request, ``cut`` counts the iterators that raised RequestStreamCutError."""

    def __init__(self) -> None:
        self.got = threading.Event()
        self.cut = 0
        self.lock = threading.Lock()

    def _read_after_end(self, requests: Iterator[bytes], context: Any) -> None:
        next(requests)
        self.got.set()
        deadline = time.monotonic() + 5.0
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.001)
        try:
            for _ in requests:
                pass
        except RequestStreamCutError:
            with self.lock:
                self.cut += 1

    def upload(self, requests: Iterator[bytes], context: Any) -> bytes:
        self._read_after_end(requests, context)
        return b""

    def chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self._read_after_end(requests, context)
        yield b""

    def add(self, _servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _SVC,
                    {
                        "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                        "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
                    },
                ),
            )
        )


def _callback_wrappers() -> int:
    """grpc's batch callbacks alive now (each holds its batch's future until it runs)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "CallbackWrapper")


async def _requests() -> AsyncIterator[bytes]:
    yield b"a"
    await asyncio.sleep(30)  # never half-closed: the caller cancels first


async def _drain(call: AsyncIterator[Any]) -> None:
    async for _ in call:
        pass


@pytest.mark.parametrize("kind", ["stream_unary", "stream_stream"])
async def test_reads_after_the_call_ended_leave_nothing_behind(kind: str) -> None:
    handlers = _Handlers()
    reg = QueueRegistry()
    srv = meshkit.MeshServer(
        "cut",
        [(handlers.add, None)],
        registry=reg,
        options=meshkit.ServeOptions(
            insecure=True, instance_id="c1", drain_delay_s=0.0, grace_s=1.0
        ),
    )
    await srv.start()
    try:
        reg.answers.put_nowait(
            frozenset({Instance(service="cut", instance_id="c1", host="127.0.0.1", port=srv.port)})
        )
        opts = meshkit.DialOptions(insecure=True, retry=None, outlier=None)
        async with meshkit.dial("cut", registry=reg, options=opts) as ch:
            if kind == "stream_unary":
                method: Any = ch.stream_unary(f"/{_SVC}/Upload")
            else:
                method = ch.stream_stream(f"/{_SVC}/Chat")

            async def cut_calls(n: int) -> None:
                for _ in range(n):
                    handlers.got.clear()
                    call = method(_requests(), timeout=30)
                    # a response stream starts when read: read it meanwhile
                    waited = asyncio.ensure_future(call if kind == "stream_unary" else _drain(call))
                    await until(
                        handlers.got.is_set, timeout_s=5.0, what="the handler's first request"
                    )
                    call.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waited

            async def settled() -> None:  # every handler thread has read on and ended
                await until(
                    lambda: handlers.cut == done,
                    timeout_s=10.0,
                    what="every handler's iterator raising RequestStreamCutError",
                )

            await cut_calls(5)  # warm-up: grpc's and meshkit's one-time objects
            done = 5
            await settled()
            base = _callback_wrappers()
            await cut_calls(_N)
            done += _N
            await settled()
            after_n = _callback_wrappers() - base
            await cut_calls(_N)
            done += _N
            await settled()
            after_2n = _callback_wrappers() - base
    finally:
        await srv.drain()
    # a leak of one per call: 30 then 60; none: the same few either way
    assert after_2n - after_n < _N // 3, (
        f"grpc batch callbacks grew by {after_n} over {_N} cut calls and by {after_2n} "
        f"over {2 * _N}: reads started on ended calls are left in memory"
    )
