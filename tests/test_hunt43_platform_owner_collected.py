"""A registry's HTTP-client owner task (``hold_until_cancelled``) of an event loop closed
with it pending, collected later: its coroutine is closed (``GeneratorExit``), and its
``finally`` awaited the client's ``close()`` there, so Python reported
``RuntimeError: coroutine ignored GeneratorExit`` (an unraisable exception) and the client
was not closed (aiohttp then warns "Unclosed client session" from whatever test's garbage
collection finds it).

Seen under ``MESHKIT_TEST_LOOP=uvloop`` (uvloop drops a closed loop's pending task sooner,
before the registry's next request abandons its session):
``tests/discovery/test_etcd.py::test_a_keeper_whose_loop_closed_without_ending_it_is_replaced``
with ``-W error::pytest.PytestUnraisableExceptionWarning``, and
``tests/discovery/test_etcd_sessions.py::test_session_of_a_loop_closed_with_its_owner_pending_is_closed[asyncio]``
failing ``Unclosed client session`` after another test's leak in the same worker. The
coroutine itself does it on both loops (this test). A library fault in
``meshkit/discovery/_shared.py`` (``hold_until_cancelled``), fixed: on ``GeneratorExit`` it
closes the client synchronously (``_close_without_loop``) and awaits nothing.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import pytest

from meshkit.discovery._shared import CloseRace, hold_until_cancelled

pytestmark = pytest.mark.timeout(60)


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"], ids=["asyncio", "uvloop"])
def test_an_owner_collected_after_its_loop_closed_raises_nothing(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closes: list[str] = []

    async def close() -> None:  # as aiohttp's session.close(): it awaits its connector
        closes.append("started")
        await asyncio.sleep(0)
        closes.append("ended")

    loop = _new_loop(kind)
    try:
        owner = loop.create_task(hold_until_cancelled(close, CloseRace(), 1.0, (OSError,)))
        loop.run_until_complete(asyncio.sleep(0.05))  # the owner holds
        assert not owner.done()
    finally:
        loop.close()  # stopped and closed with the owner pending (a thread's loop)
    caught: list[str] = []

    def hook(u: Any) -> None:
        caught.append(f"{type(u.exc_value).__name__}: {u.exc_value}")

    monkeypatch.setattr(sys, "unraisablehook", hook)
    del owner, loop
    for _ in range(3):
        gc.collect()
    assert [c for c in caught if "GeneratorExit" in c] == []
