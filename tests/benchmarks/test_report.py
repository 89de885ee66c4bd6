"""The benchmark report's note on the machine's speed (``benchmarks.report.machine_note``)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import report


def _results(qps: float, client_s_per_1k: float, server_s_per_1k: float) -> dict[str, Any]:
    raw = {"qps": qps, "client_cpu_s_per_1k": client_s_per_1k,
           "server_cpu_s_per_1k": server_s_per_1k}
    return {"scenarios": {"overhead": {"by_concurrency": {"32": {"raw": raw}}}}}


def test_a_slow_machine_is_flagged_with_which_way_the_targets_read() -> None:
    """2026-12-04's slow VM (raw at 2,494 QPS, 702 us of CPU per call) showed `full` over
    its 0.70x line; the note says grpc ran 2.66x the reference's CPU and that ratio targets
    read high there."""
    note = report.machine_note(_results(2494.0, 0.2874, 0.4147))
    assert note is not None
    assert "2,494 QPS, 702.1 us" in note and "6,355 QPS, 264.1 us" in note
    assert "WARNING: grpc ran 2.66x" in note
    assert "QPS-ratio targets read high and the microsecond targets low" in note


def test_a_machine_near_the_reference_gets_no_warning() -> None:
    note = report.machine_note(_results(6100.0, 0.1256, 0.1645))
    assert note is not None and "WARNING" not in note and "290.1 us" in note


@pytest.mark.parametrize(("cpu", "named"), [("Intel(R) Xeon(R) Processor", True),
                                             ("AMD EPYC 7R13 Processor", False), (None, False)])
def test_a_processor_other_than_the_references_is_named(cpu: str | None, named: bool) -> None:
    """The reference ran on an AMD EPYC: a run on another processor says so (its speed
    factor is the processor's as well as the load's); the same family or no model: not."""
    results: dict[str, Any] = {**_results(5242.0, 0.1337, 0.1933), "machine": {"cpu": cpu}}
    note = report.machine_note(results)
    assert note is not None and "327.0 us" in note
    assert ("processor (Intel(R) Xeon(R) Processor) is not the reference's (AMD EPYC)"
            in note) is named


def test_a_faster_machine_is_flagged_the_other_way() -> None:
    note = report.machine_note(_results(12000.0, 0.060, 0.080))
    assert note is not None and "targets read low and the microsecond targets high" in note



def test_a_run_on_another_loop_gets_its_figures_without_the_check() -> None:
    """The reference ran on asyncio's loop: a ``--loop uvloop`` run (raw grpc.aio cheaper
    by design) is given the figures and no warning either way."""
    note = report.machine_note({**_results(9000.0, 0.060, 0.080), "loop": "uvloop"})
    assert note is not None and "WARNING" not in note
    assert "140.0 us" in note and "this run's was uvloop's: no speed check" in note


@pytest.mark.parametrize("results", [{}, {"scenarios": {"overhead": {}}},
                                     _results(0.0, 0.1, 0.1)])
def test_no_note_without_a_raw_run_at_concurrency_32(results: dict[str, Any]) -> None:
    assert report.machine_note(results) is None


def test_the_markdown_report_carries_the_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "scenario_tables", lambda name, res: [])  # a bare result
    results = {**_results(2494.0, 0.2874, 0.4147), "targets": []}
    md = report.markdown(results)
    assert "### Targets" in md and "WARNING: grpc ran 2.66x" in md


def test_error_counts_name_their_status_codes() -> None:
    """A contender that had errors shows which status codes (most first): a burst of
    fast failures in one round reads differently as UNAVAILABLE or as INTERNAL."""
    row = {"qps": 1.0, "p50_us": 1.0, "p99_us": 1.0, "client_cpu_s_per_1k": 0.1,
           "server_cpu_s_per_1k": 0.1, "errors": 12,
           "errors_by_status": {"INTERNAL": 2, "UNAVAILABLE": 10}}
    res = {"rounds": 1, "round_s": 1.0, "contenders": [],
           "by_concurrency": {"32": {"+retry": row, "raw": {**row, "errors": 0,
                                                             "errors_by_status": {}}}}}
    (_, _, rows), = report.scenario_tables("overhead", res)
    assert rows[0][-1] == "12 (UNAVAILABLE 10, INTERNAL 2)" and rows[1][-1] == 0
