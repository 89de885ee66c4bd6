"""A contender (or a baseline) that served no call in any round has no CPU per call and
no ratio: its table cells read ``-``, not ``0.0``, which read as the cheapest contender
of the table (a stack refusing every call "cost" 0 ms of CPU per 1000 calls)."""

from __future__ import annotations

from typing import Any

from benchmarks import report
from benchmarks.scenarios._common import summarize


def _round(ok: int, errors: int = 0) -> dict[str, Any]:
    return {"calls": ok + errors, "ok": ok, "errors": {"UNAVAILABLE": errors} if errors else {},
            "qps": ok / 0.2, "p50_us": 500.0, "p99_us": 900.0, "cpu_s": 0.05 if ok else 0.02,
            "server_cpu_s": 0.06 if ok else 0.01}


def test_no_served_call_has_no_cpu_per_call_and_reads_dash() -> None:
    raw = [_round(400) for _ in range(3)]
    dead = [_round(0, errors=900) for _ in range(3)]
    s = summarize(dead, raw)
    assert s["client_cpu_s_per_1k"] is None and s["server_cpu_s_per_1k"] is None, s
    assert s["qps_ratio"] == 0.0 and s["errors"] == 2700  # served nothing: 0x raw
    res = {"rounds": 3, "round_s": 0.2, "contenders": [],
           "by_concurrency": {"32": {"raw": summarize(raw, raw), "defaults": s}}}
    ((_, headers, rows),) = report.scenario_tables("overhead", res)
    row = dict(zip(headers, rows[1], strict=True))
    for col in ("cli CPU ms/1k", "srv CPU ms/1k"):
        assert row[col] is None, row
    md = report.markdown({"scenarios": {"overhead": res}})
    line = next(x for x in md.splitlines() if x.startswith("| defaults |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[6] == "-" and cells[7] == "-", line


def test_a_baseline_serving_nothing_gives_no_ratio() -> None:
    """Without one baseline round that served a call there is no ratio to take: ``None``
    (``-``), not a median of no ratios read as 0.000x."""
    dead = [_round(0, errors=900) for _ in range(3)]
    good = [_round(400) for _ in range(3)]
    s = summarize(good, dead)
    assert s["qps_ratio"] is None and s["qps_ratio_range"] is None, s
    assert s["added_p50_us"] is None and s["added_cpu_us_per_call"] is None
