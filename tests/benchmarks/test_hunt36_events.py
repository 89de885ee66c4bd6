"""``python -m benchmarks.events``: its variants alternate, and a run that cannot finish
ends in bounded time."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import events


def test_the_variants_alternate_round_by_round(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Its docstring said the two variants run alternating, but every round ran ``bare``
    then ``mesh``: the mesh always second, so a drift within a round (the store's file
    growing, the NATS server's state) always fell on it. Rounds now alternate the order
    (bare mesh, mesh bare, ...), as the other benchmarks do."""
    order: list[bool] = []

    async def run_once(n: int, mesh: bool, url: str, **kw: Any) -> dict[str, float]:
        order.append(mesh)
        return {"events_per_s": 1.0, "lag_p50_ms": 1.0, "lag_p99_ms": 1.0}

    monkeypatch.setattr(events, "run_once", run_once)
    events.main(["--events", "10", "--rounds", "3"])
    assert order == [False, True, True, False, False, True]
    assert len(capsys.readouterr().out.splitlines()) == 1 + 6
