"""A unary call made while the loop that made the last one runs on another thread.

``meshkit._calls`` keeps a record of the loop that made a unary-response call last
(``_made``: its thread and its turn's calls, started together by one callback). The
record was reused when the calling thread was the record's and the record's loop was
running, wherever: an event loop stopped in one thread and run on in another (a loop
handed to a worker thread with ``run_forever``) still passed, so a call made next on the
first thread's new loop was queued on the other thread's loop (its ready queue appended
from the wrong thread, not woken): a call not awaited in its turn never started on its
own loop (``asyncio.ensure_future(call)`` ran only when something woke the other loop,
and then there).

Now the record is reused only when its loop is the calling thread's running loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from meshkit._calls import UnaryUnaryCall
from meshkit.interceptors import CallKind, ClientCallDetails

pytestmark = pytest.mark.timeout(60)

_WAIT_S = 10.0


def _details() -> ClientCallDetails:
    return ClientCallDetails(service="echo", method="/t.S/M", kind=CallKind.UNARY_UNARY,
                             timeout_s=None, metadata=None)


def test_a_call_on_a_new_loop_starts_there_while_the_last_calls_loop_runs_elsewhere(
) -> None:
    ran_on: list[tuple[Any, int]] = []

    async def invoke(details: ClientCallDetails, request: Any) -> Any:
        ran_on.append((asyncio.get_running_loop(), threading.get_ident()))
        return request

    first = asyncio.new_event_loop()

    async def a_call_awaited() -> Any:
        return await UnaryUnaryCall(_details(), b"x", invoke)

    # the last call made: on `first`, in this thread
    assert first.run_until_complete(a_call_awaited()) == b"x"
    # `first` runs on, in another thread
    running = threading.Event()
    first.call_soon(running.set)
    worker = threading.Thread(target=first.run_forever, daemon=True)
    worker.start()
    try:
        assert running.wait(_WAIT_S)

        async def a_call_started_on_its_own() -> None:
            call = UnaryUnaryCall(_details(), b"y", invoke)  # not awaited in its turn
            for _ in range(100):
                await asyncio.sleep(0.01)
                if len(ran_on) > 1:
                    break
            assert call.done() or len(ran_on) > 1
            assert await call == b"y"

        second = asyncio.new_event_loop()
        try:
            second.run_until_complete(a_call_started_on_its_own())
        finally:
            second.close()
        me = threading.get_ident()
        assert ran_on[1] == (second, me), (ran_on[1], second, me)
    finally:
        first.call_soon_threadsafe(first.stop)
        worker.join(_WAIT_S)
        first.close()
