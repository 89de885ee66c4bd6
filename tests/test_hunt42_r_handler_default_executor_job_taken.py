"""A grpc.aio server of your own with meshkit's interceptors, a plain-function handler on
the loop's default executor (a ``ThreadPoolExecutor``), and a thread start that fails
(``can't start new thread``) while a busy worker of that executor finishes its call.

``ThreadPoolExecutor.submit`` queues the job before it starts a thread for it; a worker
that frees up in between (the start releases the GIL: Python code of ``Thread.__init__``
and ``start``, the switch interval) takes the job and runs the handler, and then
``submit`` raises. 8e650728 marked the job abandoned only after ``run_in_executor`` had
raised, so a job already taken ran its handler while its call was refused with the nack
(``RESOURCE_EXHAUSTED`` "server busy", ``meshkit-nack: 1``), which tells mesh clients
none of it ran and makes them send it again elsewhere: a ``PlaceOrder`` run twice. Now
the job and the refusal claim the call first (one of them wins): a job that started
first is the call's answer; a refused call's job does nothing.

Real ``grpc.aio`` server on 127.0.0.1; injected: the failing start, which (to make the
interleaving certain) lets the busy worker finish and take the queued job before it
raises.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from meshkit._handlers import Before, WrappingInterceptor, handler_resolver
from meshkit._limits import guard_generic_handler

pytestmark = pytest.mark.timeout(60)

_SERVICE = "hunt42.r.DefaultExecutorTaken"
_PREFIX = "hunt42-default-executor-taken"
_WAIT_S = 8.0
_NACK = ("meshkit-nack", "1")


class _Checks(WrappingInterceptor):
    def _before_for(self, method: str) -> Before | None:
        def before(context: Any) -> None:
            return None

        return before


class _State:
    def __init__(self) -> None:
        self.refuse = False
        self.release = threading.Event()
        self.taken = threading.Event()  # the refused call's handler started
        self.ran: list[bytes] = []


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[_State]:
    st = _State()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX) and st.refuse:
            # the busy worker finishes and takes the queued job, then the start fails
            st.release.set()
            st.taken.wait(_WAIT_S)
            time.sleep(0.05)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield st
    st.release.set()


@pytest.fixture
async def channel(state: _State) -> AsyncIterator[grpc.aio.Channel]:
    def work(request: bytes, context: Any) -> bytes:
        if request == b"busy":
            state.release.wait(_WAIT_S)
        else:
            state.taken.set()
            state.ran.append(request)
        return b"done:" + request

    def down(request: bytes, context: Any) -> Iterator[bytes]:
        state.taken.set()
        state.ran.append(request)
        yield b"first:" + request
        yield b"last:" + request

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=_PREFIX)
    loop.set_default_executor(pool)
    service = guard_generic_handler(grpc.method_handlers_generic_handler(_SERVICE, {
        "Work": grpc.unary_unary_rpc_method_handler(work),
        "Down": grpc.unary_stream_rpc_method_handler(down)}), handler_resolver([_Checks()]))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    chan = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield chan
    finally:
        state.release.set()
        await chan.close()
        await server.stop(None)
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        pool.shutdown(wait=False)


@pytest.mark.parametrize("method", ["Work", "Down"])
async def test_a_job_a_worker_took_before_the_start_failed_is_not_nacked(
        channel: grpc.aio.Channel, state: _State, method: str) -> None:
    work = channel.unary_unary(f"/{_SERVICE}/Work")
    busy = asyncio.ensure_future(work(b"busy", timeout=_WAIT_S))  # the one worker, busy
    loop = asyncio.get_running_loop()
    end = loop.time() + _WAIT_S
    while not [t for t in threading.enumerate() if t.name.startswith(_PREFIX)]:
        assert loop.time() < end
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # (its handler is waiting on release)
    state.refuse = True
    try:
        if method == "Work":
            answer: Any = await work(b"order", timeout=_WAIT_S)
        else:
            call = channel.unary_stream(f"/{_SERVICE}/Down")(b"order", timeout=_WAIT_S)
            answer = [m async for m in call]
    except grpc.aio.AioRpcError as e:
        nacked = _NACK in tuple(e.trailing_metadata() or ())
        answer = (e.code(), e.details(), nacked)
    state.refuse = False
    assert await busy == b"done:busy"
    await asyncio.sleep(0.2)
    assert state.ran == [b"order"]  # the interleaving happened: its handler ran
    # so the call is answered by it, not refused as one none of whose code ran
    assert answer == (b"done:order" if method == "Work"
                      else [b"first:order", b"last:order"]), answer
