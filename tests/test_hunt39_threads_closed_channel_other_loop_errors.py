"""Mesh channels dialed, used and closed in worker threads' event loops
(``asyncio.run()`` in threads) while another loop of the process goes on (the main
thread's, here a server's loop in a thread of its own).

grpc.aio hands every completion of the process to the loop a call or watch belongs to
(``call_soon_threadsafe``, from whichever loop reads its poller). ``close()`` cancelled
each endpoint's connectivity tracker (a task awaiting ``wait_for_state_change``) before
closing its sub-channel: the tracker's task ended, but grpc's watch stayed armed and
completed as the sub-channel shut down, after ``close()`` returned, often once the
worker's loop had closed; the loop still running then logged "Exception in callback
PollerCompletionQueue._handle_events ... RuntimeError: Event loop is closed" with its
traceback at ERROR, several times per channel closed so. The trackers now see their
sub-channel's SHUTDOWN (their watch answered in their own loop) before they are done.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path
from typing import Any

import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.loops import LoopThread, run

pytestmark = pytest.mark.timeout(120)

_THREADS = 4
_ROUNDS = 12


def test_channels_closed_in_worker_loops_leave_no_completion_for_a_closed_loop(
    tmp_path: Path,
) -> None:
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=15.0))
    other = LoopThread()  # the loop that goes on (and reads grpc's poller)
    errors: list[str] = []

    def handler(loop: Any, context: dict[str, Any]) -> None:
        errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    # what earlier tests of this process left for the collector (a channel never closed
    # keeps grpc's watches armed until it is collected) reaches its closed loops first,
    # before this loop's handler listens
    gc.collect()
    other.run(_settle(0.3))
    other.loop.call_soon_threadsafe(other.loop.set_exception_handler, handler)

    async def start() -> meshkit.MeshServer:
        server = meshkit.MeshServer(
            "workers", [add_echo("w1")], registry=reg,
            options=meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0))
        await server.start()
        return server

    async def client() -> None:
        async with meshkit.dial("workers", registry=reg,
                                options=meshkit.DialOptions(insecure=True)) as channel:
            for _ in range(3):
                assert await channel.unary_unary(method("Unary"))(b"x", timeout=10) \
                    == b"w1|x"

    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(_ROUNDS):
                run(client())
        except BaseException as exc:  # reported below
            failures.append(exc)

    server = other.run(start())
    try:
        threads = [threading.Thread(target=worker) for _ in range(_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert failures == []
        other.run(_settle(1.0))  # late completions, if any, reach the other loop by now
        assert errors == []
    finally:
        other.run(server.drain(), timeout_s=30)
        other.run(reg.close())
        other.close()


async def _settle(seconds: float) -> None:
    await asyncio.sleep(seconds)
