"""A channel whose event loop ended (``asyncio.run()`` returned without closing it) says
it is shut down, and its calls in a later loop fail ``CANCELLED`` "closed"
(meshkit/_pool.py).

``asyncio.run()`` cancels the tasks left at its end, the pool's discovery watch and
connectivity trackers among them: the channel followed discovery no more, yet read
``READY`` (or whatever its endpoints last were) from ``get_state()``, and a call made from
a later loop (a module-level channel reused by the next ``asyncio.run()``, a session-wide
test fixture under per-test loops) failed with a bare ``RuntimeError`` ("attached to a
different loop", a grpc.aio future of the ended loop) or, before a first discovery answer,
``UNAVAILABLE`` "no endpoint is registered" for a service that is. grpc.aio's channels
are as bound to their loop; a pool whose watch is cancelled from outside (not by its
``close()``) now shuts itself down as ``close()`` would, synchronously (its sub-channels'
loop is gone): ``get_state()`` ``SHUTDOWN``, calls ``CANCELLED`` naming the ended loop,
and a ``close()`` from another loop returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance


class _Registry:
    """Answers one instance at a port nothing listens on (or nothing, with ``empty``)."""

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        if self.empty:  # never answers
            await asyncio.Event().wait()
        yield frozenset({Instance(service=service, instance_id="a", host="127.0.0.1",
                                  port=9)})
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("empty", [False, True], ids=["answered", "no-answer-yet"])
def test_a_channel_whose_loop_ended_is_shut_down(empty: bool) -> None:
    async def first() -> meshkit.MeshChannel:
        ch = meshkit.dial("svcloop", registry=_Registry(empty),  # type: ignore[arg-type]
                          options=meshkit.DialOptions(insecure=True, retry=None))
        if not empty:
            await asyncio.wait_for(ch._pool.resolved.wait(), 5)
        return ch

    ch = asyncio.run(first())  # not closed: the loop's end cancels its tasks

    async def second() -> None:
        assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/svc.Svc/Get")(b"", timeout=2)
        assert err.value.code() is grpc.StatusCode.CANCELLED, err.value
        assert "closed" in (err.value.details() or ""), err.value
        await asyncio.wait_for(ch.close(), 3)

    asyncio.run(second())


async def test_a_watch_cancelled_from_outside_shuts_the_pool_down_and_close_ends_it(
        ) -> None:
    """The same loop going on (a test helper that cancels every task): the pool is shut
    down at once, and a later close() still closes the sub-channel it had."""
    ch = meshkit.dial("svcloop", registry=_Registry(),  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, retry=None))
    await asyncio.wait_for(ch._pool.resolved.wait(), 5)
    sub = ch._pool.conns["a"].channel
    ch._pool._watch_task.cancel()
    await asyncio.sleep(0.05)
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    await asyncio.wait_for(ch.close(), 3)
    assert sub.get_state() is grpc.ChannelConnectivity.SHUTDOWN
