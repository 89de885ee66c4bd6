"""A handler call queued while no thread could start runs once a thread can start.

:class:`meshkit._threads.HandlerThreads` queues a call whose thread failed to start
(``RuntimeError: can't start new thread``: ``pids.max``, ``RLIMIT_NPROC``) behind the
pool's busy threads. It then waited for one of them to finish its call, however long
that took, though the pool was below ``max_workers`` and threads could start again a
moment later: nothing tried to start one until a new call came. Now the start is tried
again (on the submitting event loop's timer, and whenever a thread finishes a call while
more calls are owed a thread), so the queued call runs as soon as a thread starts.

The failing start is the one thing injected (``threading.Thread.start`` raising as
CPython's does, for the pool's threads only).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit._threads import HandlerThreads
from meshkit.discovery import LocalRegistry

pytestmark = pytest.mark.timeout(60)

_PREFIX = "hunt43-owed"
_WAIT_S = 10.0


class _Starts:
    """Whether the pool's thread starts fail (as CPython's when ``pthread_create``
    fails), and how many did."""

    def __init__(self) -> None:
        self.failing = False
        self.refused = 0


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Starts]:
    state = _Starts()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX) and state.failing:
            state.refused += 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield state


def _hold(event: threading.Event) -> str:
    event.wait(_WAIT_S * 3)
    return "held"


async def test_a_queued_call_runs_once_a_thread_can_start_again(starts: _Starts) -> None:
    """Submitted from an event loop (as a server's calls are): one busy thread, the
    second call's thread fails to start, then starts work again: the second call runs
    while the first is still busy, with no new call arriving."""
    pool = HandlerThreads(4, _PREFIX)
    release = threading.Event()
    try:
        busy = pool.submit(_hold, release)
        starts.failing = True
        queued = pool.submit(lambda: "ran")
        assert starts.refused == 1
        await asyncio.sleep(0.3)
        assert not queued.done()  # no thread for it yet
        starts.failing = False
        # TimeoutError: the queued call still waits behind the busy thread
        assert await asyncio.wait_for(asyncio.wrap_future(queued), _WAIT_S) == "ran"
        assert not busy.done()
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_calls_owed_a_thread_get_one_as_a_busy_thread_frees_up(starts: _Starts) -> None:
    """Submitted with no event loop: two calls queued while starts failed; once the busy
    thread frees up it takes the first of them, and the second gets a thread of its
    own then (starts work again), instead of waiting behind the first."""
    pool = HandlerThreads(4, _PREFIX)
    first_release = threading.Event()
    second_release = threading.Event()
    try:
        busy = pool.submit(_hold, first_release)
        starts.failing = True
        second = pool.submit(_hold, second_release)
        third = pool.submit(lambda: "ran")
        assert starts.refused == 2
        starts.failing = False
        first_release.set()
        assert busy.result(timeout=_WAIT_S) == "held"
        assert third.result(timeout=_WAIT_S) == "ran"  # TimeoutError: behind `second`
        assert not second.done()
    finally:
        first_release.set()
        second_release.set()
        pool.shutdown(wait=True)


class _Limit:
    """``allowed`` more starts of the pool's threads, then each start fails."""

    def __init__(self) -> None:
        self.allowed = 0
        self.refused = 0


_SERVICE = "hunt43.lifecycle.Owed"


async def test_a_servers_queued_call_runs_once_a_thread_can_start(
        registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through a real server (its ``handler_threads`` pool, grpc.aio calls on
    127.0.0.1): the second call's thread cannot start; once starts work again it is
    answered while the first call's handler still holds its thread."""
    limit = _Limit()
    limit.allowed = 1
    prefix = f"meshkit-handler-{_SERVICE}"
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(prefix):
            if limit.allowed <= 0:
                limit.refused += 1
                raise RuntimeError("can't start new thread")
            limit.allowed -= 1
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    release = threading.Event()
    holding = threading.Event()

    def work(request: bytes, context: Any) -> bytes:
        if request == b"hold":
            holding.set()
            release.wait(_WAIT_S * 3)
        return b"done:" + request

    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"Work": grpc.unary_unary_rpc_method_handler(work)})
    server = meshkit.MeshServer(
        _SERVICE, [(lambda h, srv: srv.add_generic_rpc_handlers((h,)), handler)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0.0,
                                     grace_s=1.0, handler_threads=4))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call: Any = channel.unary_unary(f"/{_SERVICE}/Work")
            held = asyncio.ensure_future(call(b"hold", timeout=_WAIT_S * 3))
            await asyncio.wait_for(asyncio.to_thread(holding.wait, _WAIT_S), _WAIT_S * 2)
            second = asyncio.ensure_future(call(b"second", timeout=_WAIT_S * 3))
            loop = asyncio.get_running_loop()
            end = loop.time() + _WAIT_S
            while limit.refused < 1:
                assert loop.time() < end, "the second call's thread start was not tried"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert not second.done()
            limit.allowed = 10  # starts work again
            # TimeoutError: it still waits for the held call's thread
            assert await asyncio.wait_for(second, _WAIT_S) == b"done:second"
            assert not held.done()
            release.set()
            assert await held == b"done:hold"
    finally:
        release.set()
        await server.drain()
