"""EtcdRegistry's aiohttp sessions, one per event loop: every session the registry makes
is closed, against a real etcd node (that of test_etcd.py): one of a loop closed with its
owner task pending, and one a loop began to make while another closed the registry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import threading
import warnings

import aiohttp
import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import RegistryError
from tests.discovery import test_etcd as _etcd_tests
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.test_etcd import LOOPS, _close, _register_then_list
from tests.support.etcd import EtcdCluster
from tests.support.gated import GatedLock
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop

pytestmark = pytest.mark.timeout(60)

# test_etcd.py's real etcd node (one per module), for these tests too
_shared_node = _etcd_tests._shared_node
node = _etcd_tests.node


def _connection_copies(session: aiohttp.ClientSession) -> list[socket.socket]:
    """Copies (``os.dup``) of the descriptors of ``session``'s connections (pooled and in
    use), to see from outside whether each connection was shut down."""
    connector = session.connector
    assert connector is not None
    protocols = [proto for conns in connector._conns.values() for proto, _ in conns]
    protocols.extend(connector._acquired)
    copies = []
    for proto in protocols:
        assert proto.transport is not None
        fd = proto.transport.get_extra_info("socket").fileno()
        copies.append(socket.socket(fileno=os.dup(fd)))
    return copies


def _shut_down(sock: socket.socket) -> bool:
    """Whether ``sock``'s connection was shut down for reading (a read ends at once with
    nothing; etcd sends nothing unasked on an idle connection)."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_session_of_a_loop_closed_with_its_owner_pending_is_closed(
        node: EtcdCluster, loop_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's loop that registered is stopped and closed with the session's owner task
    pending (it never runs, nor closes the session). The next loop's first request, or
    close(), lets go of that session: its connections to etcd are shut down and it is
    closed (their descriptors only as collected: see ``EtcdRegistry._abandon``). It was
    dropped unclosed (taken as closed by its owner as its loop ended): its connection to
    etcd stayed open until the garbage collector found it, warning
    ``Unclosed connector`` and ``unclosed <socket.socket ...>`` (seen under another test
    of test_etcd.py, whichever ran the collection). On uvloop (``meshkit.run()``'s loop)
    that first request failed ``TypeError`` instead: uvloop's transport sockets refuse
    ``shutdown()``."""
    monkeypatch.setenv("MESHKIT_TEST_LOOP", loop_kind)  # the loops tests.support.loops makes
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    one, two = make_instance(service, 1), make_instance(service, 2)
    other = LoopThread()
    try:
        other.run(reg.register(one))
        session = reg._sessions[other.loop][0]
        copies = _connection_copies(session)
        assert copies, "the register() left no pooled connection to etcd"
    finally:
        other.close()
    try:
        assert run_loop(_register_then_list(reg, two)) == sorted(
            [one.instance_id, two.instance_id])
    finally:
        run_loop(_close(reg))
    try:
        assert session.closed
        if loop_kind == "asyncio":
            # uvloop's loop.close() closes its transports' descriptors itself (the
            # connection ends there, but for the test's own copies of them)
            assert [_shut_down(c) for c in copies] == [True] * len(copies)
        del session
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        # the descriptors of a closed loop's transports are closed only as they are
        # collected (asyncio warns "unclosed transport" or "unclosed <socket...>" then):
        # no transport of a closed loop can be closed through it; their connections
        # were shut down above, and the session and its connector are closed
        leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
                 and ("connector" in str(w.message) or "session" in str(w.message))]
        assert leaks == []
    finally:
        for c in copies:
            c.close()


def test_session_begun_while_another_loop_closes_is_not_left_open(node: EtcdCluster) -> None:
    """A thread's loop makes its first request (its session not made yet) while another
    loop closes the registry, between ``_get_session``'s closed check and its mutex. The
    request fails with RegistryError and no session is left open. The session was made
    and stored after close() had taken the sessions: nobody closed it."""
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    other = LoopThread()
    try:
        gate = GatedLock(other._thread)
        reg._loops_mutex = gate  # type: ignore[assignment]
        request = asyncio.run_coroutine_threadsafe(reg.failing(unique_service()), other.loop)
        assert gate.paused.wait(10), "the request never reached the mutex"
        try:
            run_loop(_close(reg))
        finally:
            gate.resume.set()
        with pytest.raises(RegistryError, match="closed"):
            request.result(10)
        assert [s for s, _ in reg._sessions.values() if not s.closed] == []
    finally:
        with contextlib.suppress(Exception):
            other.run(_close(reg))
        other.close()


def test_close_returns_once_another_running_loops_session_is_closed(
        node: EtcdCluster) -> None:
    """close() in one loop closes the session of another thread's running loop in that
    loop, and returns once it is closed (within ``request_timeout_s``), so that the thread
    may stop and close its loop right after. close() returned as soon as it had asked
    that loop to: a loop stopped then (before it ran the session's owner) was closed
    with the session open and its owner pending. Here the other loop is kept busy for
    0.2 s while close() runs."""
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    other = LoopThread()
    busy = threading.Event()
    timer = threading.Timer(0.2, busy.set)
    try:
        other.run(reg.register(make_instance(service, 1)))
        session = reg._sessions[other.loop][0]
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

        assert run_loop(close_then_look()), "close() returned with the session open"
    finally:
        busy.set()
        timer.cancel()
        other.close()
