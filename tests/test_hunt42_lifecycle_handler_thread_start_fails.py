"""A server's plain-function (``def``) handler threads when the process cannot start one
more thread (``RuntimeError: can't start new thread``: a container's ``pids.max``, a
user's ``RLIMIT_NPROC``, memory for another stack).

:class:`meshkit._threads.HandlerThreads` put the call's work on its queue *before* it
started the thread that was to run it, as ``ThreadPoolExecutor`` does. When that start
failed, ``submit()`` raised (the caller was answered ``UNKNOWN``) but the work stayed
queued, and the next thread of the pool to free up ran it: the handler of a call its
caller had been told failed ran anyway, later, with nobody waiting for it (a
``PlaceOrder`` the client retries runs twice). Now the thread is started before the work
is queued: with other threads in the pool the call waits for one of them (as a call past
``handler_threads`` does) and runs once; with none, ``submit()`` raises and nothing is
left to run (the call refused ``RESOURCE_EXHAUSTED`` "server busy" with the nack
trailer, see tests/test_hunt42_r_handler_thread_none_starts.py).

Real ``grpc.aio`` servers and calls on 127.0.0.1; the failing start is the one thing
injected (``threading.Thread.start`` raising as CPython's does, for the server's handler
threads only: the test process's own limit cannot be lowered for root).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit._threads import HandlerThreads
from meshkit.discovery import LocalRegistry

pytestmark = pytest.mark.timeout(60)

_SERVICE = "hunt42.lifecycle.Threads"
_PREFIX = f"meshkit-handler-{_SERVICE}"
_WAIT_S = 8.0  # a step's bound (each takes milliseconds)


class _StartLimit:
    """Lets ``allowed`` handler threads start, then makes each further start of one fail
    as CPython's ``Thread.start`` does when ``pthread_create`` fails. ``refused``: every
    refused start; ``refused_calls``: those of a call's own thread (tried by
    ``submit()``), not the retries for a call owed one (the event loop's timer, since
    3aa8ff0d)."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.refused = 0
        self.refused_calls = 0


@pytest.fixture
def start_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[_StartLimit]:
    limit = _StartLimit(0)
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX):
            if limit.allowed <= 0:
                limit.refused += 1
                if sys._getframe(1).f_code.co_name == "submit":
                    limit.refused_calls += 1
                raise RuntimeError("can't start new thread")
            limit.allowed -= 1
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield limit


def _handlers(ran: list[bytes], release: threading.Event) -> grpc.GenericRpcHandler:
    def work(request: bytes, context: Any) -> bytes:
        ran.append(request)
        if request.startswith(b"hold"):
            release.wait(_WAIT_S)
        return b"done:" + request

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        ran.append(request)
        yield b"first:" + request
        yield b"last:" + request

    return grpc.method_handlers_generic_handler(
        _SERVICE, {"Work": grpc.unary_unary_rpc_method_handler(work),
                   "Stream": grpc.unary_stream_rpc_method_handler(stream)})


def _servicer(ran: list[bytes], release: threading.Event) -> tuple[Any, Any]:
    return (lambda handler, server: server.add_generic_rpc_handlers((handler,)),
            _handlers(ran, release))


async def _read_all(call: Any) -> list[bytes]:
    return [message async for message in call]


async def _wait_for(predicate: Any) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + _WAIT_S
    while not predicate():
        assert loop.time() < end, "not within the bound"
        await asyncio.sleep(0.01)


async def test_a_call_whose_thread_cannot_start_waits_for_a_busy_one_and_runs_once(
        registry: LocalRegistry, start_limit: _StartLimit) -> None:
    ran: list[bytes] = []
    release = threading.Event()
    start_limit.allowed = 1  # the first call's thread starts, the second's cannot
    server = meshkit.MeshServer(
        _SERVICE, [_servicer(ran, release)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, port=0, drain_delay_s=0.0,
                                     grace_s=1.0, handler_threads=4))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            work = channel.unary_unary(f"/{_SERVICE}/Work")
            held = asyncio.ensure_future(work(b"hold", timeout=_WAIT_S))
            await _wait_for(lambda: ran == [b"hold"])
            with capture_logs() as logs:
                second = asyncio.ensure_future(work(b"second", timeout=_WAIT_S))
                await _wait_for(lambda: start_limit.refused_calls >= 1)
                await asyncio.sleep(0.2)
            assert not second.done(), "the second call failed at once"
            warned = [e for e in logs if e["event"].startswith("could not start another")]
            assert len(warned) == 1 and warned[0]["log_level"] == "warning"
            assert warned[0]["threads"] == 1
            assert "can't start new thread" in warned[0]["error"]
            # a plain-function response stream too (its own thread job)
            stream = channel.unary_stream(f"/{_SERVICE}/Stream")(b"s", timeout=_WAIT_S)
            streamed = asyncio.ensure_future(_read_all(stream))
            # the stream's own start refused (not a retry of the second call's)
            await _wait_for(lambda: start_limit.refused_calls >= 2)
            await asyncio.sleep(0.2)
            assert not streamed.done(), "the stream failed at once"
            assert start_limit.refused_calls == 2
            release.set()
            assert await held == b"done:hold"
            # the second call waited for the first one's thread, as past handler_threads
            assert await second == b"done:second"
            assert await streamed == [b"first:s", b"last:s"]
            assert sorted(ran) == [b"hold", b"s", b"second"]
    finally:
        release.set()
        await server.drain()


async def test_a_call_no_thread_can_run_fails_and_never_runs_later(
        registry: LocalRegistry, start_limit: _StartLimit) -> None:
    ran: list[bytes] = []
    release = threading.Event()
    start_limit.allowed = 0  # no handler thread can start
    server = meshkit.MeshServer(
        _SERVICE, [_servicer(ran, release)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, port=0, drain_delay_s=0.0,
                                     grace_s=1.0, handler_threads=4))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            work = channel.unary_unary(f"/{_SERVICE}/Work")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await work(b"refused", timeout=_WAIT_S)
            # refused as the request gate sheds a call none of whose code ran
            # (tests/test_hunt42_r_handler_thread_none_starts.py)
            assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("meshkit-nack", "1") in tuple(failed.value.trailing_metadata() or ())
            assert ran == []
            start_limit.allowed = 1  # threads can start again
            assert await work(b"later", timeout=_WAIT_S) == b"done:later"
            await asyncio.sleep(0.2)  # (the refused call's work, if queued, ran by now)
            assert ran == [b"later"], "a call its caller was told failed ran afterwards"
    finally:
        release.set()
        await server.drain()


def test_the_pool_queues_nothing_when_no_thread_starts(start_limit: _StartLimit) -> None:
    pool = HandlerThreads(2, _PREFIX)
    ran: list[str] = []
    try:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            pool.submit(ran.append, "refused")
        start_limit.allowed = 2
        assert pool.submit(ran.append, "later").result(_WAIT_S) is None
        assert pool.submit(ran.append, "last").result(_WAIT_S) is None
        assert ran == ["later", "last"]
    finally:
        pool.shutdown(wait=True)
