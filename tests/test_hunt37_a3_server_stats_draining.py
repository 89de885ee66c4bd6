"""MeshServer.stats().draining says "draining now": false once the drain is over."""

from __future__ import annotations

import asyncio

import meshkit
from meshkit.discovery import LocalRegistry

_OPTS = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0, grace_s=1)


async def test_draining_during_the_drain_and_not_after_it(registry: LocalRegistry) -> None:
    """While the drain runs stats() says draining; once the server has stopped it no
    longer does (it used to say draining for good, to a reader of stats() or of the
    final snapshot, as if the stop never finished)."""
    srv = meshkit.MeshServer("echo", registry=registry,
                             options=meshkit.ServeOptions(insecure=True, admin=None,
                                                          drain_delay_s=0.5, grace_s=1))
    await srv.start()
    assert not srv.stats().draining and srv.stats().ready
    drain = asyncio.ensure_future(srv.drain())
    await asyncio.sleep(0.1)  # inside drain_delay_s
    during = srv.stats()
    assert during.draining and not during.ready
    await asyncio.wait_for(drain, 10)
    after = srv.stats()
    assert not after.draining and not after.ready
    assert after.as_dict()["draining"] is False


async def test_not_draining_after_a_drain_before_start(registry: LocalRegistry) -> None:
    """A drain() of a server never started stops it at once: stats() says stopped, not
    draining."""
    srv = meshkit.MeshServer("echo", registry=registry, options=_OPTS)
    await srv.drain()
    stats = srv.stats()
    assert not stats.draining and not stats.ready


async def test_not_draining_after_a_start_undone_by_drain(registry: LocalRegistry) -> None:
    """A drain() while start() runs makes the start undo itself; once both returned the
    server is stopped and stats() does not say draining."""
    srv = meshkit.MeshServer("echo", registry=registry, options=_OPTS)
    starting = asyncio.ensure_future(srv.start())
    await asyncio.sleep(0)
    await asyncio.wait_for(srv.drain(), 10)
    await asyncio.gather(starting, return_exceptions=True)
    assert not srv.stats().draining
