"""A channel closed in the same turn of the event loop as endpoints were added (a
discovery answer, a batch of a large one, a certificate rebuild, just before
``close()``): the state trackers spawned for them had not started, ``close()`` cleared
the pool's sub-channels and then waited for those trackers, which started and failed at
once with ``KeyError`` on the missing sub-channel: "Task exception was never retrieved"
logged at ERROR by asyncio for every such endpoint (hundreds for a large answer) when
the tasks were collected.

A tracker that starts after its endpoint's sub-channel is gone (the pool closed, the
endpoint left) now just ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import meshkit
from meshkit.discovery import Instance
from tests.support.registries import QueueRegistry

pytestmark = pytest.mark.timeout(60)


def _inst(i: int) -> Instance:
    return Instance(service="s", instance_id=f"i{i:03d}", host="127.0.0.1", port=9)


def _record_tasks(pool: Any) -> list[asyncio.Task[Any]]:
    tasks: list[asyncio.Task[Any]] = []
    spawn = pool.spawn

    def recording(coro: Any) -> asyncio.Task[Any]:
        task = spawn(coro)
        tasks.append(task)
        return task

    pool.spawn = recording
    return tasks


def _failed(tasks: list[asyncio.Task[Any]]) -> list[str]:
    return [repr(t.exception()) for t in tasks
            if t.done() and not t.cancelled() and t.exception() is not None]


@pytest.mark.parametrize("turns", [0, 1, 2, 3], ids=["t0", "t1", "t2", "t3"])
@pytest.mark.parametrize("rebuild", [False, True], ids=["answer", "rebuild"])
async def test_close_in_the_turn_endpoints_came_leaves_no_failed_tracker(
        rebuild: bool, turns: int) -> None:
    ch = meshkit.dial("s", registry=QueueRegistry(),
                      options=meshkit.DialOptions(insecure=True, retry=None))
    pool = ch._pool
    tasks = _record_tasks(pool)
    pool.apply(frozenset(_inst(i) for i in range(300)))  # 64 now, a batch a turn after
    if rebuild:
        await asyncio.sleep(0.2)  # all in, their trackers running
        pool.rebuild()  # new sub-channels: 64 now, a batch a turn after
    for _ in range(turns):
        await asyncio.sleep(0)
    await ch.close()
    await asyncio.sleep(0.05)
    assert tasks
    assert not _failed(tasks), _failed(tasks)
