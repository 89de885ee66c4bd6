"""The tables print a ratio to the baseline with the digits its target is read with."""

from __future__ import annotations

from typing import Any

from benchmarks import report


def _row(qps: float, ratio: float | None) -> dict[str, Any]:
    return {"qps": qps, "qps_ratio": ratio, "p50_us": 1000.0, "added_p50_us": 0.0,
            "p99_us": 1400.0, "client_cpu_s_per_1k": 0.4, "server_cpu_s_per_1k": 0.6,
            "errors": 0, "errors_by_status": {}}


def test_an_overhead_ratio_under_its_target_does_not_print_as_one() -> None:
    """A contender at 0.94x raw's QPS printed as '1.0' in the overhead table's 'x raw'
    column, and one at 0.86x (under the 0.90x target) as '0.9': the column had one
    decimal where the targets table (benchmarks.report._digits) gives ratios three."""
    res = {"rounds": 3, "round_s": 0.2, "contenders": [],
           "by_concurrency": {"32": {"raw": _row(1000.0, 1.0), "mesh": _row(940.0, 0.94),
                                     "defaults": _row(860.0, 0.8649)}}}
    (_, headers, rows), = report.scenario_tables("overhead", res)
    col = headers.index("x raw")
    cells = {r[0]: report._fmt(r[col]) if not isinstance(r[col], str) else r[col]
             for r in rows}
    assert cells == {"raw": "1.000", "mesh": "0.940", "defaults": "0.865"}
    md = report.markdown({"scenarios": {"overhead": res}, "targets": []})
    assert "| 0.940 |" in md and "| 0.865 |" in md


def test_the_compare_ratios_to_raw_have_three_digits() -> None:
    row = {**_row(740.0, 0.6346), "qps_ratio_vs_hand": 2.858,
           "qps_ratio_vs_hand_range": [1.0, 6.47], "qps_ratio_vs_hand-notrace": 1.2344}
    res = {"rounds": 3, "round_s": 0.2,
           "by_concurrency": {"32": {"raw": _row(1166.0, 1.0), "full": row}}}
    (_, headers, rows), = report.scenario_tables("compare", res)
    full = dict(zip(headers, rows[1], strict=True))
    assert full["x raw"] == "0.635" and full["x hand-notrace"] == "1.234"
    assert full["x hand"] == "2.858 (1.00-6.47)"
