"""The six scenarios, in the order a run performs them.

Each module has ``NAME`` and ``async def run(ctx) -> dict`` (JSON-able results); see
:mod:`benchmarks.scenarios._common` for the plan and the interleaved rounds.
"""

from __future__ import annotations

from benchmarks.scenarios import compare, convergence, failover, fanout, overhead, slow_replica

__all__ = ["SCENARIOS"]

SCENARIOS = {m.NAME: m.run for m in (overhead, compare, slow_replica, failover, convergence,
                                     fanout)}
"""Scenario name -> ``run(ctx)``, in run order."""
