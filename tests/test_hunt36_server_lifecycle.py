"""MeshServer's lifecycle at its edges: a drain before the start, and what follows it."""

from __future__ import annotations

import asyncio

import pytest

import meshkit
from meshkit.discovery import LocalRegistry

_OPTS = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0, grace_s=1)


async def test_drain_before_start_stops_the_server_for_good(registry: LocalRegistry) -> None:
    """A drain() that runs before start() (a shutdown racing the start-up task) leaves the
    server stopped: wait_stopped() returns, and a later start() raises RuntimeError
    without binding or registering (it used to serve, registered, with nobody left to
    stop it, and wait_stopped() waited for ever)."""
    srv = meshkit.MeshServer("echo", registry=registry, options=_OPTS)
    await srv.drain()
    await asyncio.wait_for(srv.wait_stopped(), 3)
    with pytest.raises(RuntimeError, match="after drain"):
        await srv.start()
    assert srv.port == 0 and srv.instance is None and not srv.live
    assert await registry.instances("echo") == frozenset()


async def test_drain_racing_ahead_of_a_start_task(registry: LocalRegistry) -> None:
    """A start() task created, then drain() awaited before the task first ran: the start
    raises instead of serving after the drain returned."""
    srv = meshkit.MeshServer("echo", registry=registry, options=_OPTS)
    starting = asyncio.ensure_future(srv.start())
    await srv.drain()
    with pytest.raises(RuntimeError):
        await starting
    assert await registry.instances("echo") == frozenset()
    assert not srv.live
