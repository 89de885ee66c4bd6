"""``benchmarks.instructions --cpu`` (getrusage) and ``benchmarks.opcodes`` (bytecodes,
through ``around_measured``) read the measured calls' window in ``_drive``; the access
log renders its captured records when a batch is written (a 0.2 s timer, or 327 records),
so the window must start with the warm-up's records written and end with the calls' own:
before, the 200 warm-up records were rendered inside it and the calls' last ones after it
(``shipped``, as dial()/serve() ship with their JSON access log)."""

from __future__ import annotations

import resource as _resource
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import instructions


class _Resource:
    """``instructions.resource`` with a ``getrusage`` noting the access-log records
    pending at each read (the window's start and end)."""

    RUSAGE_SELF = _resource.RUSAGE_SELF

    def __init__(self) -> None:
        self.pending: list[int] = []

    def getrusage(self, who: int) -> Any:
        from meshkit.observability import _logging

        self.pending.append(sum(len(w._buf) for w in list(_logging._writers)))
        return _resource.getrusage(who)


@pytest.fixture
def res(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Resource]:
    import structlog

    r = _Resource()
    monkeypatch.setattr(instructions, "resource", r)
    yield r
    structlog.reset_defaults()


@pytest.mark.timeout(120)
def test_cpu_window_holds_its_own_access_lines(res: _Resource) -> None:
    instructions._child("shipped", 60, 1)
    assert len(res.pending) == 2 and res.pending == [0, 0], res.pending
