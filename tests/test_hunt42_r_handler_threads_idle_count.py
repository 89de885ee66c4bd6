"""A server's plain-function (``def``) handler threads after a spell in which no more of
them could start (``RuntimeError: can't start new thread``: a container's ``pids.max``
reached for a while, a sidecar's burst of processes under the same ``RLIMIT_NPROC``).

Since 351576bc a call whose thread cannot start waits for a busy thread of the pool. But
:class:`meshkit._threads.HandlerThreads` counts its idle threads as
``ThreadPoolExecutor`` does, a permit released by a thread each time it finishes a call,
taken by a call that finds one: a call queued with neither a permit nor a thread of its
own left one permit too many when it ran, for good. Once threads could start again, as
many calls as the spell had queued each took a permit and waited behind a busy thread
instead of starting one: the pool never grew back (3 calls whose handlers wait for each
other timed out together on 1 thread, ``handler_threads=4``), and with a thread per call
slot an admitted call waited for a thread (the gate's promise that it never does).
Now a thread that finishes a call while calls queued without a thread still wait takes
one of those instead of counting itself idle.

Real threads; for the server, real ``grpc.aio`` servers and calls on 127.0.0.1; the
failing start is the one thing injected, as in
tests/test_hunt42_lifecycle_handler_thread_start_fails.py.
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

_SERVICE = "hunt42.r.IdleCount"
_PREFIX = f"meshkit-handler-{_SERVICE}"
_WAIT_S = 8.0  # a step's bound (each takes milliseconds)
_MEET_S = 3.0  # how long the handlers of a burst wait for each other
_SPELL = 3  # calls queued while no thread could start


class _StartLimit:
    """Lets ``allowed`` handler threads start, then makes each further start of one fail
    as CPython's ``Thread.start`` does when ``pthread_create`` fails."""

    def __init__(self) -> None:
        self.allowed = 0
        self.refused = 0


@pytest.fixture
def start_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[_StartLimit]:
    limit = _StartLimit()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX):
            if limit.allowed <= 0:
                limit.refused += 1
                raise RuntimeError("can't start new thread")
            limit.allowed -= 1
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield limit


def _meet(barrier: threading.Barrier) -> str:
    barrier.wait()  # BrokenBarrierError when they ran one after the other
    return "met"


def test_the_pool_grows_back_once_threads_start_again(start_limit: _StartLimit) -> None:
    pool = HandlerThreads(4, _PREFIX)
    try:
        start_limit.allowed = 1
        release = threading.Event()
        held = pool.submit(release.wait, _WAIT_S)
        queued = [pool.submit(int, str(i)) for i in range(_SPELL)]  # no thread starts
        assert start_limit.refused == _SPELL
        release.set()
        assert held.result(_WAIT_S) is True
        assert [f.result(_WAIT_S) for f in queued] == list(range(_SPELL))
        start_limit.allowed = 10  # the spell is over
        barrier = threading.Barrier(_SPELL, timeout=_MEET_S)
        burst = [pool.submit(_meet, barrier) for _ in range(_SPELL)]
        outcomes = []
        for f in burst:
            try:
                outcomes.append(f.result(_WAIT_S))
            except threading.BrokenBarrierError:
                outcomes.append("waited behind a busy thread")
        assert outcomes == ["met"] * _SPELL
        assert len(pool._threads) == _SPELL
    finally:
        pool.shutdown(wait=True)


def test_an_idle_pool_starts_no_thread_it_does_not_need(start_limit: _StartLimit) -> None:
    # the count kept right the other way too: calls one after the other reuse one thread
    pool = HandlerThreads(4, _PREFIX)
    try:
        start_limit.allowed = 10
        for i in range(20):
            assert pool.submit(int, str(i)).result(_WAIT_S) == i
            # (the thread counts itself idle just after the result: let it)
            for _ in range(200):
                if pool._idle._value:  # type: ignore[attr-defined]
                    break
                threading.Event().wait(0.01)
        assert len(pool._threads) == 1
    finally:
        pool.shutdown(wait=True)


async def test_a_server_serves_a_burst_on_its_threads_after_the_spell(
        registry: LocalRegistry, start_limit: _StartLimit) -> None:
    release = threading.Event()
    barrier = threading.Barrier(_SPELL, timeout=_MEET_S)

    def work(request: bytes, context: Any) -> bytes:
        if request == b"hold":
            release.wait(_WAIT_S)
        elif request == b"meet":
            _meet(barrier)
        return b"done:" + request

    handlers = grpc.method_handlers_generic_handler(
        _SERVICE, {"Work": grpc.unary_unary_rpc_method_handler(work)})
    start_limit.allowed = 1
    server = meshkit.MeshServer(
        _SERVICE, [(lambda h, s: s.add_generic_rpc_handlers((h,)), handlers)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, port=0, drain_delay_s=0.0,
                                     grace_s=1.0, handler_threads=4))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(f"/{_SERVICE}/Work")
            held = asyncio.ensure_future(call(b"hold", timeout=_WAIT_S))
            loop = asyncio.get_running_loop()
            end = loop.time() + _WAIT_S
            while start_limit.allowed:  # the first call has its thread
                assert loop.time() < end
                await asyncio.sleep(0.01)
            spell = [asyncio.ensure_future(call(b"s%d" % i, timeout=_WAIT_S))
                     for i in range(_SPELL)]
            while start_limit.refused < _SPELL:  # each waits for the busy thread
                assert loop.time() < end
                await asyncio.sleep(0.01)
            release.set()
            assert await held == b"done:hold"
            assert await asyncio.gather(*spell) == [b"done:s%d" % i for i in range(_SPELL)]
            await asyncio.sleep(0.1)  # (the thread counts itself idle after answering)
            start_limit.allowed = 10  # the spell is over
            burst = await asyncio.gather(
                *(call(b"meet", timeout=_WAIT_S) for _ in range(_SPELL)),
                return_exceptions=True)
            assert burst == [b"done:meet"] * _SPELL, burst
    finally:
        release.set()
        await server.drain()
