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


@pytest.mark.parametrize("args", [["--events", "0"], ["--rounds", "0"]])
def test_counts_below_one_are_refused(args: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``--events 0`` waited forever for the first event of a backlog of none."""
    with pytest.raises(SystemExit) as exc:
        events.main(args)
    assert exc.value.code == 2 and args[0] in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_a_run_whose_events_are_never_applied_ends_and_cleans_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A projection that never applies an event (here it raises on every delivery, so
    the consumer redelivers) held the run forever on its ``done.wait()``, and a failed
    run left its stream on the shared NATS. The wait is bounded (``events.STALL_S``
    plus a time per event) and the stream, connection and tasks are cleaned up."""
    import nats as nats_py

    from tests.messaging.conftest import NATS_URL, require_nats

    await require_nats()

    class Broken:
        applied = 0

        def __init__(self, store: Any) -> None:
            pass

        async def __call__(self, dv: Any) -> None:
            raise RuntimeError("projection broken")

    async def streams() -> set[str]:
        nc = await nats_py.connect(NATS_URL)
        try:
            return {s.config.name for s in await nc.jetstream().streams_info()
                    if s.config.name and s.config.name.startswith("BENCH")}
        finally:
            await nc.close()

    before = await streams()
    monkeypatch.setattr(events, "Projection", Broken)
    monkeypatch.setattr(events, "STALL_S", 1.0)
    with pytest.raises(TimeoutError, match="0 of 3 events applied"):
        await events.run_once(3, False, NATS_URL, paced=2)
    assert await streams() == before
