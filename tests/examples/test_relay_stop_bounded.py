"""A stop of the ecom services' background tasks (``events._cancel``: the outbox relay's
context exit, the NATS connect task) is bounded: a task that outlives its cancel (nats-py's
connect retrying a server that refused the credentials did once, in a loaded CI run: the
relay's stop hung until pytest's 60 s timeout) is logged and left after
``CANCEL_WAIT_S``; a task's own exception is still raised."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from examples.ecom import events


async def _stubborn(stop: asyncio.Event) -> None:
    while not stop.is_set():  # swallows its cancels, as a library's retry loop may
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            continue


async def test_a_task_that_outlives_its_cancel_does_not_hold_the_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "CANCEL_WAIT_S", 0.3)
    stop = asyncio.Event()
    stubborn = asyncio.create_task(_stubborn(stop), name="stubborn")
    quick = asyncio.create_task(asyncio.sleep(10), name="quick")
    # both started before the stop cancels them: a task cancelled before its first step
    # ends at once, never swallowing the cancel (Python 3.11's wait_for ran _cancel in a
    # task of its own, a turn later; from 3.12 it awaits it in this task, no turn between)
    await asyncio.sleep(0)
    try:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            await asyncio.wait_for(events._cancel([stubborn, quick]), 5)  # before: hung
            took = time.monotonic() - started
        assert took < 3, took
        assert quick.cancelled()
        assert [(e["event"], e["task"]) for e in logs] == [
            ("task did not end when cancelled", "stubborn")]
    finally:
        stop.set()
        await stubborn


async def test_a_tasks_own_exception_is_still_raised() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await events._cancel([task])
