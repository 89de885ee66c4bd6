"""A convergence target is not met when calls failed during its rounds: the join and
leave times are read off the served calls, so a channel that failed calls while an
instance joined or drained (calls sent to it before it served, or after it stopped) read
"met" in the targets table with its failed calls only in the scenario's own table, unlike
the throughput and latency targets (judged on successful calls, not met when the
contender failed calls, with a note naming them)."""

from __future__ import annotations

from typing import Any

from benchmarks import report


def _row(failed: int) -> dict[str, Any]:
    rounds = [{"failed": failed, "failed_codes": ["UNAVAILABLE"] if failed else [],
               "served_by_new": 10}]
    return {"registry": "local", "join_s_max": 0.3, "join_s_median": 0.3,
            "leave_s_max": 0.2, "leave_s_median": 0.2, "never_served": 0,
            "failed_calls": failed, "rounds": rounds}


def _targets(failed: int) -> dict[str, dict[str, Any]]:
    results = {"scenarios": {"convergence": {"contenders": {"local-p2c": _row(failed)}}}}
    return {t["target"]: t for t in report.targets(results)
            if t["target"].startswith("convergence (local")}


def test_failed_calls_make_the_convergence_targets_not_met() -> None:
    rows = _targets(7)
    assert len(rows) == 2
    for row in rows.values():
        assert row["met"] is False, row
        assert row["note"] == "'local-p2c' failed 7 calls (UNAVAILABLE)", row
    md = report.markdown({"targets": list(rows.values())})
    assert "**missed** ('local-p2c' failed 7 calls (UNAVAILABLE))" in md, md


def test_no_failed_call_leaves_them_met() -> None:
    for row in _targets(0).values():
        assert row["met"] is True and "note" not in row, row
