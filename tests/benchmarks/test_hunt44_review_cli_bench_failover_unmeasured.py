"""A failover round whose balance was not measured is not read as any other (review of
478e01ef).

478e01ef made such a round's ``balanced_after_s`` ``None`` (no call served before the
kill: no pre-kill rate to judge against), but ``None`` already meant "never balanced":
the contender's ``balanced_after_s_max`` went ``None`` with one such round, so the
failover table read "not balanced" for a contender whose every measured round balanced,
and the target read "not measured" (met ``None``) for one whose measured round never
balanced: a measured miss hidden by an unmeasured round.
"""

from __future__ import annotations

from typing import Any

from benchmarks import report
from benchmarks.scenarios.failover import analyse, summarize

_SURVIVORS = ["fo-2", "fo-3"]


def _round(*, pre: bool, balanced: bool) -> dict[str, Any]:
    """One round's row: 1 s before the kill at t=10 (3 replicas, served or failed), 2 s
    after it (the survivors evenly, or all to fo-2)."""
    t: list[list[Any]] = [[9.0 + i * 0.005,
                           0.002 if pre else 0.0001,
                           ("fo-1", "fo-2", "fo-3")[i % 3] if pre else "!UNAVAILABLE"]
                          for i in range(200)]
    t += [[10.0 + i * 0.005, 0.002, _SURVIVORS[i % 2] if balanced else "fo-2"]
          for i in range(400)]
    row = analyse(t, 10.0, "fo-1", _SURVIVORS)
    row["victim"] = "fo-1"
    return row


def _results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"scenarios": {"failover": {
        "replicas": 3, "concurrency": 8, "pre_s": 1.0, "post_s": 2.0, "window_s": 0.1,
        "contenders": {"default": {"layers": [], **summarize(rows)}}}}}


def _target(results: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in report.targets(results)
                if t["target"] == "failover: balanced again after SIGKILL")


def _cell(results: dict[str, Any]) -> str:
    (_title, headers, rows), *_ = report.scenario_tables(
        "failover", results["scenarios"]["failover"])
    return report._fmt(rows[0][headers.index("balanced after s (max)")], 2)


def test_rows_are_what_they_say() -> None:
    """The three kinds of round (guards the test's own timelines)."""
    assert _round(pre=True, balanced=True)["balanced_after_s"] == 0.0
    assert _round(pre=True, balanced=False)["balanced_after_s"] is None
    unmeasured = _round(pre=False, balanced=True)
    assert unmeasured["balanced_after_s"] is None and not unmeasured["pre_kill_served"]


def test_an_unmeasured_round_does_not_make_a_balanced_contender_read_not_balanced() -> None:
    """Measured rounds balanced at once, one round unmeasured: the table shows 0.0 s
    and says a round was not measured; the target is not met (not measured)."""
    results = _results([_round(pre=True, balanced=True), _round(pre=False, balanced=True)])
    cell = _cell(results)
    assert "not balanced" not in cell, cell
    assert cell.startswith("0.0 ") and "not measured" in cell, cell
    assert _target(results)["met"] is None, _target(results)


def test_a_measured_round_that_never_balanced_is_not_met_whatever_else() -> None:
    """A measured round never balanced and an unmeasured one: not balanced, not met."""
    results = _results([_round(pre=True, balanced=False), _round(pre=False, balanced=True)])
    assert _target(results)["met"] is False, _target(results)
    assert "not balanced" in _cell(results)


def test_only_unmeasured_rounds_read_not_measured() -> None:
    """Every round unmeasured: the table and the target say not measured."""
    results = _results([_round(pre=False, balanced=True)])
    assert _cell(results) == "not measured", _cell(results)
    target = _target(results)
    assert target["met"] is None and "not measured" in str(target["value"]), target


def test_measured_rounds_read_as_before() -> None:
    """Every round measured and balanced: the largest, met."""
    results = _results([_round(pre=True, balanced=True)] * 2)
    assert _cell(results) == "0.00"
    assert _target(results)["met"] is True


def test_older_results_without_the_new_counts_still_read() -> None:
    """A results file written before these counts (no unbalanced_rounds): None is
    not balanced, as it was."""
    old = {"scenarios": {"failover": {"replicas": 3, "concurrency": 8, "contenders": {
        "default": {"failed_calls": 0, "balanced_after_s_max": None, "extra_p99_us": 1.0,
                    "extra_max_us": 2.0, "unbalanced_share_before": 0.0,
                    "unbalanced_share_after": 0.0, "rounds": [{"victim": "fo-1"}]}}}}}
    assert _target(old)["met"] is False
    assert _cell(old) == "not balanced"
