"""Ending meshkit's own background tasks without losing the caller's cancellation
(:func:`meshkit._tasks.cancel_and_wait`), and the registries that use it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshkit._tasks import cancel_and_wait
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(30)


async def _slow_to_end(ended: asyncio.Event) -> None:
    """A background task whose clean-up after a cancel takes a while (a heartbeat's last
    write, a keep-alive's request)."""
    try:
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(0.3)
        ended.set()


async def test_the_tasks_own_cancellation_is_swallowed_the_callers_is_not() -> None:
    """Waiting for a cancelled task ends quietly; a cancel of the waiter during that wait
    is raised in the waiter, as ``contextlib.suppress(CancelledError)`` did not."""
    ended = asyncio.Event()
    task = asyncio.ensure_future(_slow_to_end(ended))
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # its own cancellation: swallowed
    assert task.cancelled() and ended.is_set()

    ended = asyncio.Event()
    task = asyncio.ensure_future(_slow_to_end(ended))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    waiter.cancel()  # the caller's: kept
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert waiter.cancelled()

    async def fails() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("clean-up failed")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="clean-up failed"):
        await cancel_and_wait(task)


async def test_a_cancelled_deregister_is_cancelled_not_carried_on(tmp_path: Path) -> None:
    """``LocalRegistry.deregister`` cancelled while it waited for the instance's heartbeat
    to end (``asyncio.wait_for(server.drain(), ...)`` running out) swallowed its own
    cancellation with the heartbeat's and went on to write: the caller's task ended as
    if never cancelled, and a ``wait_for`` waited for the whole write. It is cancelled."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                          poll_interval_s=0.05))
    inst = Instance(service="svc", instance_id="a", host="127.0.0.1", port=1)
    try:
        await registry.register(inst)
        ended = asyncio.Event()
        old = registry._heartbeats["a"]
        old.cancel()
        registry._heartbeats["a"] = asyncio.ensure_future(_slow_to_end(ended))
        await asyncio.sleep(0)
        deregister = asyncio.ensure_future(registry.deregister(inst))
        await asyncio.sleep(0.05)
        deregister.cancel()
        with pytest.raises(asyncio.CancelledError):
            await deregister
        assert deregister.cancelled()
    finally:
        await registry.close()
