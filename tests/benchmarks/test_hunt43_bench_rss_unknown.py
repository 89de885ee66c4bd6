"""An overhead contender whose peak RSS could not be read (its process gone before the
read, no ``/proc`` and no psutil) shows ``-`` in the RSS columns, not 0.0 MiB (the
smallest footprint of the table)."""

from __future__ import annotations

from typing import Any

from benchmarks import report


def _summary() -> dict[str, Any]:
    return {"qps": 1000.0, "qps_ratio": 1.0, "p50_us": 500.0, "added_p50_us": 0.0,
            "p99_us": 900.0, "client_cpu_s_per_1k": 0.1, "server_cpu_s_per_1k": 0.1,
            "errors": 0}


def test_unknown_rss_reads_dash() -> None:
    res = {"rounds": 3, "round_s": 0.2,
           "contenders": [{"name": "raw", "server_peak_rss_kb": None,
                           "client_peak_rss_kb": 2048}],
           "by_concurrency": {"1": {"raw": _summary()}}}
    ((_, headers, rows),) = report.scenario_tables("overhead", res)
    row = dict(zip(headers, rows[0], strict=True))
    assert row["srv RSS MiB"] is None and row["cli RSS MiB"] == 2.0, row
    md = report.markdown({"scenarios": {"overhead": res}})
    line = next(x for x in md.splitlines() if x.startswith("| raw |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[8] == "-" and cells[9] == "2.0", line
