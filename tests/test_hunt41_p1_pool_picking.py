"""``EndpointPool.picking`` is ``resolved`` set and not ``closed`` at every step of a
channel's life (meshkit/_pool.py): an attempt reads that one attribute to pick at once
instead of ``resolved.is_set() and not closed`` (a per-call cut), so the two must never
disagree. Real grpc.aio server and local registry on loopback."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, method, raw_server


def _agrees(pool: meshkit._pool.EndpointPool) -> bool:
    return pool.picking is (pool.resolved.is_set() and not pool.closed)


async def test_picking_follows_resolution_and_close(registry: LocalRegistry) -> None:
    """Unresolved: not picking; resolved: picking, and a call is answered; closed: not
    picking, and a call fails CANCELLED without a pick."""
    async with raw_server(handler("e1")) as (_, port):
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True, retry=None))
        pool = ch._pool
        assert not pool.picking and _agrees(pool)
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port))
        try:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert pool.picking and _agrees(pool)
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=10) == b"e1|x"
        finally:
            await asyncio.wait_for(ch.close(), 5)
        assert not pool.picking and _agrees(pool)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert err.value.code() is grpc.StatusCode.CANCELLED


async def test_a_pool_closed_before_discovery_answers_never_picks(
        registry: LocalRegistry) -> None:
    """Closed before any discovery answer (resolved set by the close), an answer that
    arrives later does not make it pick."""
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=None))
    pool = ch._pool
    await asyncio.wait_for(ch.close(), 5)
    assert pool.resolved.is_set() and not pool.picking and _agrees(pool)
    pool._mark_resolved()  # what a late answer's apply() does
    assert not pool.picking and _agrees(pool)
