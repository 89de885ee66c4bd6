"""``benchmarks.micro`` times each variant with ``time.process_time``; the access log
renders its captured records when a batch is written (a 0.2 s timer, or 327 records), so
every window must end with its own records written and start with none pending: before,
a telemetry variant's last records were rendered after its window (on the timer, inside
another variant's), and the e2e run's warm-up records inside its own."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import micro


class _Clock:
    """``micro.time`` with a ``process_time`` noting the access-log records pending at
    each read (every window's start and end)."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.pending: list[int] = []

    def process_time(self) -> float:
        from meshkit.observability import _logging

        self.pending.append(sum(len(w._buf) for w in list(_logging._writers)))
        return self._time.process_time()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    c = _Clock()
    monkeypatch.setattr(micro, "time", c)
    yield c


@pytest.mark.timeout(120)
def test_telemetry_windows_hold_their_own_access_lines(clock: _Clock) -> None:
    asyncio.run(micro.telemetry(io.StringIO(), rounds=1, calls=50))
    assert len(clock.pending) == 2 * 2 * len(micro.TELEMETRY_VARIANTS), clock.pending
    assert not any(clock.pending), clock.pending


@pytest.mark.timeout(120)
def test_e2e_windows_hold_their_own_access_lines(clock: _Clock) -> None:
    asyncio.run(micro.telemetry_e2e(io.StringIO(), rounds=1, calls=32))
    assert len(clock.pending) == 2 * len(micro.TELEMETRY_VARIANTS), clock.pending
    assert not any(clock.pending), clock.pending


@pytest.mark.timeout(120)
def test_accesslog_windows_hold_their_own_lines(clock: _Clock) -> None:
    asyncio.run(micro.accesslog(io.StringIO(), rounds=1, lines=50))
    assert len(clock.pending) == 2 * 3 and not any(clock.pending), clock.pending
