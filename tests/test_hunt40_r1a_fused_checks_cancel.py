"""Review of aabcf6d (two or three fused server checks run as one straight function, four or
more through the loop): a call cancelled while one check's awaitable is pending (the caller
left during an authentication or a rate-limit lookup) ends with ``CancelledError`` from
that check, runs none of the checks after it, and leaves that check's awaitable finished,
for every position and count alike (the straight functions and the loop agree)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit._handlers import _in_order


@pytest.mark.parametrize(
    ("count", "blocked"),
    [(n, k) for n in (2, 3, 4) for k in range(n)],
    ids=lambda v: str(v),
)
async def test_cancelled_while_a_check_waits(count: int, blocked: int) -> None:
    seen: list[str] = []
    waiting = asyncio.Event()
    ended: list[str] = []

    def make(i: int) -> Any:
        async def wait_forever() -> None:
            try:
                waiting.set()
                await asyncio.Event().wait()
            finally:
                ended.append(f"c{i}")

        async def quick() -> None:
            seen.append(f"c{i}:awaited")

        def check(context: Any) -> Any:
            seen.append(f"c{i}")
            if i == blocked:
                return wait_forever()
            return quick() if i % 2 else None  # the others: awaited or synchronous

        return check

    fused = _in_order([make(i) for i in range(count)])
    assert fused is not None

    async def call() -> None:
        pending = fused("ctx")
        if pending is not None:
            await pending

    task = asyncio.create_task(call())
    await asyncio.wait_for(waiting.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    expected = []
    for i in range(blocked + 1):
        expected.append(f"c{i}")
        if i % 2 and i != blocked:
            expected.append(f"c{i}:awaited")
    assert seen == expected
    assert ended == [f"c{blocked}"]
