"""RepeatLog tells a count made on a later event loop when that loop's interval ends.

The timer that tells counts runs on the loop that logged a kind's full line. Events of the
kind counted on another loop (a second ``asyncio.run()``: a start-up phase then the
serving one; the baggage-cut warning is one log for the whole process) armed no timer
there, so once they stopped their count waited for the kind's next event or the process's
exit, however long that was.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshkit._log import RepeatLog
from tests.support.wait import until


class _Lines:
    """A structlog-like logger keeping ``(event, fields)`` of every line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_a_count_made_on_a_later_loop_is_told_when_its_interval_ends() -> None:
    """One event on a first loop (its full line), three on a second loop within the
    interval, then silence: the count of three is told on the second loop, within a
    few intervals."""
    log = _Lines()
    cuts = RepeatLog(log, "baggage cut", "baggage cuts", key_fields=(), interval_s=0.2)

    async def once() -> None:
        cuts.report(())

    async def three_then_wait() -> None:
        for _ in range(3):
            cuts.report(())
        # ten intervals: a loaded box's margin
        await until(lambda: len(log.lines) >= 2, timeout_s=2.0,
                    what="the count told on the second loop")

    asyncio.run(once())
    asyncio.run(three_then_wait())
    cuts.flush()
    assert log.lines[0] == ("baggage cut", {})
    assert log.lines[1][0] == "baggage cuts" and log.lines[1][1]["count"] == 3, log.lines
