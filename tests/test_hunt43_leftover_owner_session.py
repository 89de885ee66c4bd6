"""A real aiohttp session held by ``hold_until_cancelled`` whose loop was closed with the
owner pending: once the garbage collector collects the owner, the session is closed (no
"Unclosed client session"), its pooled connection was shut down (the server sees EOF), and
nothing unraisable ("coroutine ignored GeneratorExit") is reported. Before the fix the
owner's ``finally`` awaited ``session.close()`` under ``GeneratorExit``."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
import warnings
from typing import Any

import aiohttp
import pytest

from meshkit.discovery._shared import CloseRace, hold_until_cancelled

pytestmark = pytest.mark.timeout(60)


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


class _OneConnectionServer:
    """Loopback HTTP/1.1 server: answers one request on one keep-alive connection, then
    waits (bounded) for the client's end of it (EOF)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.saw_eof = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.listener.settimeout(20)
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(20)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                return
            self.saw_eof.set()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(30)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"], ids=["asyncio", "uvloop"])
def test_a_collected_owner_closes_its_session_and_shuts_its_connection(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _OneConnectionServer()
    loop = _new_loop(kind)
    try:
        async def open_session() -> tuple[aiohttp.ClientSession, asyncio.Task[None]]:
            session = aiohttp.ClientSession()
            owner = asyncio.get_running_loop().create_task(
                hold_until_cancelled(session.close, CloseRace(), 1.0, (OSError,)))
            async with session.get(f"http://127.0.0.1:{server.port}/") as resp:
                assert await resp.text() == "ok"
            return session, owner

        session, owner = loop.run_until_complete(open_session())  # connection pooled
        assert not owner.done() and not session.closed
    finally:
        loop.close()  # closed with the owner pending
    caught: list[str] = []

    def hook(u: Any) -> None:
        caught.append(f"{type(u.exc_value).__name__}: {u.exc_value}")

    monkeypatch.setattr(sys, "unraisablehook", hook)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del owner, loop
        for _ in range(3):
            gc.collect()
        assert session.closed
        del session
        for _ in range(3):
            gc.collect()
    try:
        assert [c for c in caught if "GeneratorExit" in c] == []
        assert [str(w.message) for w in seen if "Unclosed client session" in str(w.message)] == []
        assert server.saw_eof.wait(20), "the pooled connection was not shut down"
    finally:
        server.close()
