"""The process's shared ephemeral-port admin server (``_SharedAdmin``) moving to another
event loop while a third loop starts borrowing it: the third loop's registry is served by
the moved admin server. Before, the loop taking it over listed the registries to serve
before it started the new server; a registry borrowed meanwhile was added to the old,
stopped one only, and its series were missing from every later scrape."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from meshkit.observability import AdminOptions, AdminServer
from meshkit.server import _SharedAdmin

pytestmark = pytest.mark.timeout(120)


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def loops() -> Iterator[list[_Loop]]:
    made = [_Loop() for _ in range(3)]
    yield made
    for one in made:
        one.close()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
        return text


def test_registry_borrowed_during_a_move_is_served_after_it(
        loops: list[_Loop], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = loops
    options = AdminOptions(host="127.0.0.1", port=0, require_server=False)
    regs = [CollectorRegistry() for _ in range(3)]
    for name, reg in zip("abc", regs, strict=True):
        Counter(f"hunt43_move_{name}", "a test counter", registry=reg).inc()
    first = a.run(_SharedAdmin.acquire(options, regs[0]))
    assert b.run(_SharedAdmin.acquire(options, regs[1])) is first
    port = first.port

    gate, entered = threading.Event(), threading.Event()
    start = AdminServer.start

    async def slow_start(self: AdminServer) -> int:
        entered.set()
        await asyncio.to_thread(gate.wait, 60)
        return await start(self)

    monkeypatch.setattr(AdminServer, "start", slow_start)
    try:
        a.run(_SharedAdmin.release(regs[0]))  # a's last user: the server moves to b
        assert entered.wait(60), "the move did not start"
        assert c.run(_SharedAdmin.acquire(options, regs[2])) is not None  # borrows
    finally:
        gate.set()
    deadline = time.monotonic() + 60
    while True:
        lent = _SharedAdmin._lent
        if lent is not None and lent.server is not first and lent.server.port == port:
            break
        assert time.monotonic() < deadline, "the admin server did not move"
        time.sleep(0.05)
    text = _scrape(port)
    assert "hunt43_move_b_total" in text
    assert "hunt43_move_c_total" in text  # before: missing (added to the stopped one)
    c.run(_SharedAdmin.release(regs[2]))
    b.run(_SharedAdmin.release(regs[1]))
    assert _SharedAdmin._lent is None
