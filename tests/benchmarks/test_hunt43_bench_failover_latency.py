"""The failover scenario's extra latency after a kill is that of the calls that were
served: a contender failing calls fast (UNAVAILABLE from a dead replica without retries)
must not read as less slowed down because its refused calls' near-zero latencies filled
the percentile (as the overhead scenario counts only successful calls' latencies)."""

from __future__ import annotations

from typing import Any

from benchmarks.scenarios.failover import analyse


def _timeline() -> list[list[Any]]:
    t: list[list[Any]] = []
    # one second before the kill at t=10: 200 calls of 1 ms spread over 3 replicas
    t += [[9.0 + i * 0.005, 0.001, ("fo-1", "fo-2", "fo-3")[i % 3]] for i in range(200)]
    # the second after it: 98 served in 2 ms, 2 served in 50 ms, 100 refused in 0.1 ms
    after = [[10.0 + i * 0.005, 0.002, ("fo-2", "fo-3")[i % 2]] for i in range(98)]
    after += [[10.5, 0.050, "fo-2"], [10.6, 0.050, "fo-3"]]
    after += [[10.0 + i * 0.005 + 0.001, 0.0001, "!UNAVAILABLE"] for i in range(100)]
    return t + after


def test_extra_latency_is_that_of_served_calls() -> None:
    row = analyse(_timeline(), 10.0, "fo-1", ["fo-2", "fo-3"])
    assert row["failed"] == 100 and row["failed_codes"] == ["UNAVAILABLE"]
    # served calls' p99 after the kill is 50 ms: 49 ms over the 1 ms before it
    assert abs(row["post_1s_p99_us"] - 50_000.0) < 1e-6, row
    assert abs(row["extra_p99_us"] - 49_000.0) < 1e-6, row
    assert abs(row["pre_p99_us"] - 1_000.0) < 1e-6, row


def test_a_round_with_no_served_call_after_the_kill_has_no_extra_latency() -> None:
    t: list[list[Any]] = [[9.0 + i * 0.01, 0.001, "fo-1"] for i in range(100)]
    t += [[10.0 + i * 0.01, 0.0001, "!UNAVAILABLE"] for i in range(100)]
    row = analyse(t, 10.0, "fo-1", ["fo-2", "fo-3"])
    assert row["failed"] == 100
    assert row["post_1s_p99_us"] is None and row["extra_p99_us"] is None, row
    assert row["extra_max_us"] is None, row
