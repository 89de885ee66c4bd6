"""Two harness readings that misled.

* Failover: a round with no call served before the kill had its pre-kill p99 read as
  0.0 us (the percentile of an empty list), so its "extra" latency was the whole
  post-kill latency, and its balance was judged against a pre-kill call rate of 0 (no
  window short of calls): the ``<= 1 s`` target could read met. The pre-kill figures
  are now ``None`` ("-"), the extra ones too, and such a round's balance is not
  measured (the target reads "not measured", never met).
* Convergence: the new instance's first served call can complete before its worker
  reports the registration done (the registry shows it to watchers first), so a join
  time read ``-0.00 s``; it is now 0, and no table or target prints a negative zero.
"""

from __future__ import annotations

from typing import Any

from benchmarks import report
from benchmarks.scenarios import convergence
from benchmarks.scenarios.failover import analyse


def _no_served_call_before_the_kill() -> list[list[Any]]:
    t: list[list[Any]] = [[9.5 + i * 0.005, 0.0001, "!UNAVAILABLE"] for i in range(100)]
    # after the kill at t=10: 2 s of calls served evenly by the survivors in 2 ms
    t += [[10.0 + i * 0.005, 0.002, ("fo-2", "fo-3")[i % 2]] for i in range(400)]
    return t


def test_an_empty_pre_kill_list_has_no_p99() -> None:
    """No served call before the kill: pre p50/p99 and the extra latencies are None."""
    row = analyse(_no_served_call_before_the_kill(), 10.0, "fo-1", ["fo-2", "fo-3"])
    assert row["pre_p99_us"] is None and row["pre_p50_us"] is None, row
    assert row["extra_p99_us"] is None and row["extra_max_us"] is None, row
    assert abs(row["post_1s_p99_us"] - 2_000.0) < 1e-6, row


def test_a_round_without_pre_kill_calls_does_not_meet_the_balance_target() -> None:
    """Its balance is not measured, and the target built on it is not met."""
    t: list[list[Any]] = [[10.0 + i * 0.005, 0.002, ("fo-2", "fo-3")[i % 2]]
                          for i in range(400)]
    row = analyse(t, 10.0, "fo-1", ["fo-2", "fo-3"])
    assert row["balanced_after_s"] is None, row
    assert row["pre_p99_us"] is None, row
    results = {"scenarios": {"failover": {"contenders": {"default": {
        "failed_calls": 0, "balanced_after_s_max": None,
        "unmeasured_rounds": 1, "rounds": [row]}}}}}
    target = next(t for t in report.targets(results)
                  if t["target"] == "failover: balanced again after SIGKILL")
    assert target["met"] is not True, target
    assert "not measured" in str(target["value"]), target


def test_a_join_served_before_the_registration_returned_reads_zero() -> None:
    """A first call done 1 ms before t_reg: join 0.0, not -0.001."""
    row = convergence._analyse([[0.990, 0.009, "new"]], "new", 1.0, 3.0)
    assert row["join_s"] == 0.0, row


def test_no_negative_zero_is_printed() -> None:
    """_fmt of a tiny negative value reads 0.00, not -0.00."""
    assert report._fmt(-0.001, 2) == "0.00"
    assert report._fmt(-0.0) == "0.0"
    assert report._fmt(-0.5, 2) == "-0.50"
