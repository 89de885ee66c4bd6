"""A plain-function handler that aborts or sends its initial metadata after its call
ended leaks nothing, and gets grpc.aio's own errors.

A synchronous (``def``) handler runs in a thread; its context's ``abort()``,
``abort_with_status()`` and ``send_initial_metadata()`` run grpc.aio's coroutines on the
loop. Once the call had ended (its caller cancelled while the handler ran) grpc core
refused their batch: grpc.aio raised its internal ``ExecuteBatchError`` ("Failed
grpc_call_start_batch ... GRPC_CALL_ERROR") into the handler and kept the batch's future
and ``CallbackWrapper`` in memory for good, one of each per such call. Now nothing is
sent for an ended call: ``abort`` raises ``grpc.aio.AbortError`` (what it always raises)
and ``send_initial_metadata`` grpc.aio's ``UsageError`` "RPC already finished." (what it
raises for a call it knows is finished).

Measured as the growth of grpc's ``CallbackWrapper`` objects over ``N`` and ``2 N`` such
calls: one per call before the fix, none after.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import threading
import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry
from tests.support.wait import until

_SVC = "hunt40.v1.Late"
_N = 20  # calls per round: a leak of one object per call shows as 20 and 40


class _Handler:
    """A plain-function unary handler that waits for its call to end (its caller
    cancels), then does ``what`` to its context; ``raised`` counts what that raised."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.got = threading.Event()
        self.lock = threading.Lock()
        self.raised: collections.Counter[str] = collections.Counter()

    def late(self, request: bytes, context: Any) -> bytes:
        self.got.set()
        deadline = time.monotonic() + 5.0
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.001)
        try:
            if self.what == "abort":
                context.abort(grpc.StatusCode.INTERNAL, "too late")
            elif self.what == "abort_with_status":
                context.abort_with_status(_Status())
            else:
                context.send_initial_metadata((("late", "yes"),))
            outcome = "returned"
        except Exception as exc:
            outcome = type(exc).__name__
        with self.lock:
            self.raised[outcome] += 1
        return b""

    def add(self, _servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _SVC, {"Late": grpc.unary_unary_rpc_method_handler(self.late)}
                ),
            )
        )


class _Status(grpc.Status):
    code = grpc.StatusCode.INTERNAL
    details = "too late"
    trailing_metadata = ()


def _callback_wrappers() -> int:
    """grpc's batch callbacks alive now (each holds its batch's future until it runs)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "CallbackWrapper")


_RAISES = {
    "abort": "AbortError",
    "abort_with_status": "AbortError",
    "send_initial_metadata": "UsageError",
}


@pytest.mark.parametrize("what", sorted(_RAISES))
async def test_sends_after_the_call_ended_leave_nothing_behind(what: str) -> None:
    handler = _Handler(what)
    reg = QueueRegistry()
    srv = meshkit.MeshServer(
        "late",
        [(handler.add, None)],
        registry=reg,
        options=meshkit.ServeOptions(
            insecure=True, instance_id="l1", drain_delay_s=0.0, grace_s=1.0
        ),
    )
    await srv.start()
    try:
        reg.answers.put_nowait(
            frozenset({Instance(service="late", instance_id="l1", host="127.0.0.1", port=srv.port)})
        )
        opts = meshkit.DialOptions(insecure=True, retry=None, outlier=None)
        async with meshkit.dial("late", registry=reg, options=opts) as ch:
            method = ch.unary_unary(f"/{_SVC}/Late")
            done = 0

            async def cut_calls(n: int) -> None:
                nonlocal done
                for _ in range(n):
                    handler.got.clear()
                    call = method(b"", timeout=30)
                    waited = asyncio.ensure_future(call)
                    await until(handler.got.is_set, timeout_s=5.0, interval_s=0.005,
                                what="the handler's start")
                    call.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waited
                done += n
                await until(
                    lambda: sum(handler.raised.values()) == done,
                    timeout_s=10.0,
                    what="every handler's late send",
                )

            await cut_calls(5)  # warm-up: grpc's and meshkit's one-time objects
            base = _callback_wrappers()
            await cut_calls(_N)
            after_n = _callback_wrappers() - base
            await cut_calls(_N)
            after_2n = _callback_wrappers() - base
    finally:
        await srv.drain()
    # a leak of one per call: 20 then 40; none: the same few either way
    assert after_2n - after_n < _N // 3, (
        f"grpc batch callbacks grew by {after_n} over {_N} late sends and by {after_2n} "
        f"over {2 * _N}: batches started on ended calls are left in memory"
    )
    assert handler.raised == {_RAISES[what]: 2 * _N + 5}
