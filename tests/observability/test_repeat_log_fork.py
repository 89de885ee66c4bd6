"""RepeatLog in a child made by ``os.fork()``: the parent's counts are the parent's.

A process that logged through a :class:`~meshkit._log.RepeatLog` (the baggage-cut
warning a dialing process keeps for its life, a server's refusal lines, a rate limiter's
unread windows) and then forks (pre-fork workers, a daemon's double fork) handed each
child the events it had counted but not told yet: the child told them again at its next
event of the kind after the interval, or at ``flush()``, as the parent did, so the
counts summed over the processes exceeded the events (the class docstring's "lines of
``event`` plus the ``count`` of the ``summary`` lines is the number of events").
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from meshkit._log import RepeatLog


class _Lines:
    """A structlog-like logger keeping ``(event, fields)`` of every line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def _told(lines: list[tuple[str, dict[str, Any]]]) -> int:
    """Events told by ``lines``: one per full line, ``count`` per summary line."""
    return sum(f["count"] if e == "calls refused" else 1 for e, f in lines)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_tell_the_parents_counts_again() -> None:
    """Five events in the parent (one line, four counted), a fork, then each process
    flushes: the parent tells its four, the child nothing (it had no event)."""
    log = _Lines()
    now = [0.0]
    refusals = RepeatLog(log, "call refused", "calls refused", key_fields=("method",),
                         interval_s=60.0, clock=lambda: now[0])
    for _ in range(5):
        refusals.report(("/a.S/M",))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own lines to the parent through the pipe
        try:
            os.close(read_end)
            log.lines.clear()
            now[0] = 61.0  # past the interval: a count inherited would be told here
            refusals.report(("/a.S/M",))
            refusals.flush()
            os.write(write_end, json.dumps(log.lines).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = [(e, f) for e, f in json.loads(pipe.read() or b"[]")]
    os.waitpid(pid, 0)
    refusals.flush()
    parent = log.lines
    assert _told(parent) == 5, parent
    # the child's one event, logged in full: none of the parent's four again
    assert child == [("call refused", {"method": "/a.S/M"})], child
