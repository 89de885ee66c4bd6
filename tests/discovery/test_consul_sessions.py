"""ConsulRegistry's py-consul clients (an aiohttp session each), one per event loop: every
client the registry makes is closed, against the Consul agent double: one of a loop closed
with its owner task pending, one a loop began to make while another closed the registry,
and one of another running loop that close() closes there."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import aiohttp
import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery import test_consul as _consul_tests
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.discovery.test_consul import FAST
from tests.support.gated import GatedLock
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop

pytestmark = pytest.mark.timeout(60)

# test_consul.py's double served by a loop of its own thread, living across event loops
double_thread = _consul_tests.double_thread


def _session(reg: ConsulRegistry, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
    """The aiohttp session of ``reg``'s client of ``loop``."""
    client: Any = reg._clients[loop][0]
    session: aiohttp.ClientSession = client.http._session
    return session


async def _close(reg: ConsulRegistry) -> None:
    async with asyncio.timeout(8):
        await reg.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_client_of_a_loop_closed_with_its_owner_pending_is_closed(
        double_thread: ConsulDouble, loop_kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's loop that registered is stopped and closed with the client's owner task
    pending (it never runs, nor closes the client). The next loop's first request, or
    close(), lets go of that client: its session is closed (its connections shut down;
    their descriptors closed only as collected). It was dropped unclosed (taken as closed
    by its owner as its loop ended). On uvloop (``meshkit.run()``'s loop) that first request
    failed ``TypeError`` instead: uvloop's transport sockets refuse ``shutdown()``."""
    monkeypatch.setenv("MESHKIT_TEST_LOOP", loop_kind)  # the loops tests.support.loops makes
    service = unique_service()
    reg = ConsulRegistry(ConsulOptions(addr=double_thread.addr, **FAST))
    other = LoopThread()
    try:
        other.run(reg.register(make_instance(service, 1)))
        session = _session(reg, other.loop)
    finally:
        other.close()

    async def use_then_close() -> None:
        async with asyncio.timeout(8):
            await reg.services()
        await _close(reg)

    run_loop(use_then_close())
    assert session.closed


def test_client_begun_while_another_loop_closes_is_not_left_open(
        double_thread: ConsulDouble) -> None:
    """A thread's loop makes its first request (its client not made yet) while another
    loop closes the registry, between ``_get_client``'s closed check and its lock. The
    request fails with RegistryError and no client is left open. The client was made
    and stored after close() had taken the clients: nobody closed it."""
    reg = ConsulRegistry(ConsulOptions(addr=double_thread.addr, **FAST))
    other = LoopThread()
    try:
        gate = GatedLock(other._thread)
        reg._clients_lock = gate  # type: ignore[assignment]
        request = asyncio.run_coroutine_threadsafe(reg.services(), other.loop)
        assert gate.paused.wait(10), "the request never reached the lock"
        try:
            run_loop(_close(reg))
        finally:
            gate.resume.set()
        with pytest.raises(RegistryError, match="closed"):
            request.result(10)
        left = [loop for loop in reg._clients if not _session(reg, loop).closed]
        assert left == []
    finally:
        with contextlib.suppress(Exception):
            other.run(_close(reg))
        other.close()


def test_close_returns_once_another_running_loops_client_is_closed(
        double_thread: ConsulDouble) -> None:
    """close() in one loop closes the client of another thread's running loop in that
    loop, and returns once it is closed (within ``request_timeout_s``), so that the thread
    may stop and close its loop right after. close() returned as soon as it had asked
    that loop to. Here the other loop is kept busy for 0.2 s while close() runs."""
    service = unique_service()
    reg = ConsulRegistry(ConsulOptions(addr=double_thread.addr, **FAST))
    other = LoopThread()
    busy = threading.Event()
    timer = threading.Timer(0.2, busy.set)
    try:
        other.run(reg.register(make_instance(service, 1)))
        session = _session(reg, other.loop)
        started = threading.Event()

        def hold() -> None:
            started.set()
            busy.wait(10)

        other.loop.call_soon_threadsafe(hold)
        assert started.wait(10)
        timer.start()

        async def close_then_look() -> bool:
            await _close(reg)
            return session.closed

        assert run_loop(close_then_look()), "close() returned with the client open"
    finally:
        busy.set()
        timer.cancel()
        other.close()
