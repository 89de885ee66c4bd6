"""Clean-up that runs in a task already being cancelled (a ``finally:`` or ``except
CancelledError:`` block of a service's ``main()`` that ``asyncio.run()`` cancels on
Ctrl-C, a ``TaskGroup`` failing) ends meshkit's background tasks and goes on to its next
steps: :func:`meshkit._tasks.cancel_and_wait` raises only a cancellation of its caller
that arrives while it waits, not the one its caller was already handling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshkit._tasks import cancel_and_wait
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


async def test_cancel_and_wait_in_a_task_already_cancelled_returns() -> None:
    """A task cleaning up after its own cancellation (``cancelling()`` 1, not uncancelled)
    waits for the background task to end and carries on: cancel_and_wait raised
    CancelledError there, cutting the clean-up short after its first step."""
    steps: list[str] = []
    started = asyncio.Event()

    async def main() -> None:
        background = asyncio.ensure_future(asyncio.sleep(3600))
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait(background)
            steps.append("background ended")
            await asyncio.sleep(0)
            steps.append("next step")

    task = asyncio.ensure_future(main())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["background ended", "next step"]


async def test_cancel_and_wait_keeps_a_new_cancellation_of_a_task_already_cancelled() -> None:
    """A task cleaning up after its cancellation and cancelled again while it waits (a
    second Ctrl-C, a ``wait_for`` around the clean-up running out) gets that
    cancellation: the clean-up stops there."""
    steps: list[str] = []
    started = asyncio.Event()
    waiting = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            waiting.set()
            await asyncio.sleep(5)

    async def main() -> None:
        background = asyncio.ensure_future(slow_to_end())
        await asyncio.sleep(0)
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait(background)
            steps.append("went on")

    task = asyncio.ensure_future(main())
    await started.wait()
    task.cancel()
    await waiting.wait()
    task.cancel()  # the second one, while it waits
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(3):
            await task
    assert steps == []


async def test_cancel_and_wait_keeps_a_cancellation_requested_before_it_was_called() -> None:
    """A cancel() of the caller requested before cancel_and_wait ran, not yet delivered,
    is raised there as before (it is the caller's, not the background task's)."""
    steps: list[str] = []

    async def main() -> None:
        background = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await cancel_and_wait(background)
        steps.append("went on")

    task = asyncio.ensure_future(main())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == []


async def test_a_deregister_in_a_cancelled_main_removes_the_instance(tmp_path: Path) -> None:
    """A service whose ``main()`` deregisters in its ``finally:`` when cancelled (Ctrl-C
    under ``asyncio.run()``) leaves the registry: the deregister raised CancelledError
    when it stopped the heartbeat, before deleting the entry, so the instance stayed
    listed (until its TTL) and the registry's close() in the same block never ran."""
    opts = LocalOptions(path=tmp_path / "reg", ttl_s=30.0, poll_interval_s=0.05)
    registry = LocalRegistry(opts)
    observer = LocalRegistry(opts)
    inst = Instance(service="svc", instance_id="a", host="127.0.0.1", port=1)
    closed: list[bool] = []
    registered = asyncio.Event()

    async def main() -> None:
        await registry.register(inst)
        try:
            registered.set()
            await asyncio.sleep(3600)
        finally:
            await registry.deregister(inst)
            await registry.close()
            closed.append(True)

    try:
        task = asyncio.ensure_future(main())
        await registered.wait()
        assert await observer.instances("svc") == {inst}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def gone() -> bool:
            return not await observer.instances("svc")

        await until(gone, timeout_s=5.0, what="the instance deregistered")
        assert closed == [True]
    finally:
        await registry.close()
        await observer.close()


async def test_cancel_and_wait_keeps_a_cancellation_the_background_task_swallowed() -> None:
    """A cancellation of the caller that arrives while it waits for a background task
    that swallows its cancellations and then returns (a custom registry's watch that
    ends quietly when cancelled) is raised when the task ends: asyncio hands the
    caller's cancel to the task it awaits, so it was lost, and an ``asyncio.timeout``
    around the clean-up neither fired nor bounded what came after it."""
    steps: list[str] = []
    started = asyncio.Event()
    cancelled = asyncio.Event()  # by cancel_and_wait: the caller awaits it now

    async def stubborn() -> None:
        started.set()
        for _ in range(3):
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                cancelled.set()  # swallowed: goes on, then returns normally

    async def main() -> None:
        background = asyncio.ensure_future(stubborn())
        await started.wait()
        await cancel_and_wait(background)
        steps.append("went on")

    task = asyncio.ensure_future(main())
    await cancelled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == []


async def test_a_pending_cancellation_is_delivered_once_when_the_task_had_ended() -> None:
    """A cancel() of the caller requested before cancel_and_wait of a task that had
    ended already is delivered once, at the caller's next wait, not also raised by
    cancel_and_wait: the caller's clean-up after catching it runs to its end."""
    steps: list[str] = []

    async def main() -> None:
        background = asyncio.ensure_future(asyncio.sleep(0))
        await background
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        try:
            await cancel_and_wait(background)
            steps.append("returned")
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # clean-up that waits
            steps.append("cleaned up")
            raise

    task = asyncio.ensure_future(main())
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
    assert steps[-1] == "cleaned up", steps
