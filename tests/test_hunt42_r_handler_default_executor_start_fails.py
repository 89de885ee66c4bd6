"""meshkit's handling of plain-function (``def``) handlers on a grpc.aio server of your own
(meshkit's interceptors, no :class:`meshkit.MeshServer`): a handler of a method they check
runs in the event loop's default executor, a ``ThreadPoolExecutor``, when a thread for
it cannot start (``RuntimeError: can't start new thread``: ``pids.max``,
``RLIMIT_NPROC``).

351576bc fixed this for a MeshServer's own threads only. ``ThreadPoolExecutor`` queues
the work before it starts the thread: the start failed, ``run_in_executor`` raised, the
call was answered ``UNKNOWN`` "Unexpected <class 'RuntimeError'>: can't start new
thread", and the handler still ran later on the next thread the executor started, with
nobody waiting (a ``PlaceOrder`` the client retried ran twice); a response stream's
generator likewise. Now the job left queued does nothing when it runs, and the call is
refused as on a MeshServer: ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer.

A real ``grpc.aio`` server and calls on 127.0.0.1; the failing start is the one thing
injected, as in tests/test_hunt42_lifecycle_handler_thread_start_fails.py (for the
threads of the loop's default executor, given a name of the test's own).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from meshkit._handlers import Before, WrappingInterceptor, handler_resolver
from meshkit._limits import guard_generic_handler

pytestmark = pytest.mark.timeout(60)

_SERVICE = "hunt42.r.DefaultExecutor"
_PREFIX = "hunt42-default-executor"
_WAIT_S = 8.0
_NACK = ("meshkit-nack", "1")


class _Checks(WrappingInterceptor):
    """A check on every method (as meshkit's authentication or rate limit), so a plain
    handler runs off the loop by meshkit's hand."""

    def _before_for(self, method: str) -> Before | None:
        def before(context: Any) -> None:
            return None

        return before


class _Refusing:
    def __init__(self) -> None:
        self.on = True
        self.refused = 0


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Refusing]:
    state = _Refusing()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX) and state.on:
            state.refused += 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield state


@pytest.fixture
async def served(refusing: _Refusing) -> AsyncIterator[tuple[list[bytes], grpc.aio.Channel]]:
    ran: list[bytes] = []

    def work(request: bytes, context: Any) -> bytes:
        ran.append(request)
        return b"done:" + request

    def down(request: bytes, context: Any) -> Iterator[bytes]:
        ran.append(request)
        yield b"first:" + request
        yield b"last:" + request

    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=_PREFIX)
    asyncio.get_running_loop().set_default_executor(pool)
    service = guard_generic_handler(grpc.method_handlers_generic_handler(_SERVICE, {
        "Work": grpc.unary_unary_rpc_method_handler(work),
        "Down": grpc.unary_stream_rpc_method_handler(down)}), handler_resolver([_Checks()]))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ran, channel
    finally:
        refusing.on = False
        await channel.close()
        await server.stop(None)
        # not waited for, nor left the loop's (whose closing would wait for it): a stream
        # job run after its call was answered, that nobody stops, waits for the loop to
        # close (it ends within a second of that)
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        pool.shutdown(wait=False)


async def _call(channel: grpc.aio.Channel, method: str, tag: bytes) -> Any:
    if method == "Work":
        return await channel.unary_unary(f"/{_SERVICE}/Work")(tag, timeout=_WAIT_S)
    call = channel.unary_stream(f"/{_SERVICE}/Down")(tag, timeout=_WAIT_S)
    return [m async for m in call]


@pytest.mark.parametrize("method", ["Work", "Down"])
async def test_a_call_whose_thread_cannot_start_is_refused_and_never_runs_later(
        served: tuple[list[bytes], grpc.aio.Channel], refusing: _Refusing,
        method: str) -> None:
    ran, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _call(channel, method, b"refused")
    assert refusing.refused == 1
    assert (failed.value.code(), failed.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy")
    assert _NACK in tuple(failed.value.trailing_metadata() or ())
    refusing.on = False  # threads start again
    answer = await _call(channel, method, b"later")
    assert answer == (b"done:later" if method == "Work" else [b"first:later", b"last:later"])
    await asyncio.sleep(0.2)  # (the thread ran the queue in order: the refused job first)
    assert ran == [b"later"], "a call its caller was told failed ran afterwards"
