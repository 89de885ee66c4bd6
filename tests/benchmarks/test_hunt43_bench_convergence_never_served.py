"""A convergence contender whose new instances never served has no join or leave median:
``None`` (``-`` in the table), not the median of no rounds, 0.0 s, which read as the
fastest convergence of the table next to "join max: never"."""

from __future__ import annotations

from typing import Any

from benchmarks import report
from benchmarks.scenarios import convergence


def _round(join: float | None, leave: float | None, served: int) -> dict[str, Any]:
    return {"join_s": join, "leave_s": leave, "served_by_new": served, "calls": 100,
            "failed": 0, "failed_codes": []}


def test_never_served_has_no_medians() -> None:
    row = convergence.summarize("local-p2c", "local", [_round(None, None, 0)] * 2)
    assert row["join_s_max"] is None and row["join_s_median"] is None, row
    assert row["leave_s_max"] is None and row["leave_s_median"] is None, row
    assert row["never_served"] == 2
    res = {"contenders": {"local-p2c": row}}
    ((_, headers, rows),) = report.scenario_tables("convergence", res)
    cells = dict(zip(headers, rows[0], strict=True))
    assert cells["join max"] == "never" and cells["join median"] is None, cells
    assert cells["leave median"] is None, cells


def test_served_rounds_give_their_medians() -> None:
    row = convergence.summarize("local-rr", "local",
                                [_round(0.2, 0.1, 5), _round(0.4, 0.3, 7), _round(None, None, 0)])
    assert row["join_s_max"] is None  # one round never joined
    assert row["join_s_median"] == 0.30000000000000004 or abs(row["join_s_median"] - 0.3) < 1e-9
    assert abs(row["leave_s_median"] - 0.2) < 1e-9 and row["leave_s_max"] == 0.3
    assert row["balancer"] == "rr" and row["layers"] == [] and row["never_served"] == 1
