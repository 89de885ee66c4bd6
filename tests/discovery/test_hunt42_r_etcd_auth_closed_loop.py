"""EtcdRegistry with ``user``/``password`` (review of 45459c44): the shared authenticate
task of an event loop closed while it was in flight (a synchronous wrapper:
``loop.run_until_complete(asyncio.wait_for(registry.services(), t))`` then
``loop.close()``, the member slow to answer) stayed in the registry for good, the closed
loop and its task with it: one more per such loop, for as long as the registry lived
(and after its close()), each logged 'Task was destroyed but it is pending!' only when
the registry went. A new authenticate, and close(), now drop those of closed loops (as
the sessions of closed loops are dropped). A listening socket on 127.0.0.1 that never
answers; no etcd needed."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry

pytestmark = pytest.mark.timeout(30)


def _closed_loops(registry: EtcdRegistry) -> list[asyncio.AbstractEventLoop]:
    """Three loops each closed while the registry's authenticate was in flight."""
    closed = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        with pytest.raises(TimeoutError):
            loop.run_until_complete(asyncio.wait_for(registry.services(), 0.2))
        loop.close()
        closed.append(loop)
    assert registry._authenticating  # (before: all three held)
    return closed


def _registry(silent: socket.socket) -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(
        endpoints=(f"http://127.0.0.1:{silent.getsockname()[1]}",), user="root",
        password="x-Pa55word", request_timeout_s=5.0))


def test_closed_loops_authenticates_are_dropped() -> None:
    """At the next authenticate."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        registry = _registry(silent)
        closed = _closed_loops(registry)

        async def once_more() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(registry.services(), 0.2)
            held = [loop for loop, _ in registry._authenticating]
            assert not set(held) & set(closed), held
            await registry.close()

        asyncio.run(once_more())
        assert registry._authenticating == {}


def test_close_drops_closed_loops_authenticates() -> None:
    """At close(), no authenticate after them."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        registry = _registry(silent)
        _closed_loops(registry)
        asyncio.run(registry.close())
        assert registry._authenticating == {}
