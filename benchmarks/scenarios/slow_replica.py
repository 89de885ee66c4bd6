"""Scenario 3, a slow replica: 3 replicas, one answering 50 ms later.

Three server processes register as ``slowrep`` (``sr-slow`` sleeps 50 ms per call) and three
healthy ones as ``healthyrep``. One client process drives closed-loop load, interleaved, on:

* ``rr``: round robin over ``slowrep`` (it gives the slow replica a third of the calls);
* ``p2c``: meshkit's defaults (P2C over peak EWMA, outlier ejection, retries) over ``slowrep``;
* ``p2c-healthy``: the same over ``healthyrep``: the all-healthy p99 the target compares with;
* ``p2c-decay1s`` (diagnostic, not the default): the defaults with ``P2COptions(decay_s=1.0)``
  over ``slowrep``, to show whether the EWMA's time constant is what lets the slow replica
  in.

Reports QPS (successful calls), p50/p99 (of successful calls, ``None`` when none
succeeded), errors, and each replica's share of calls (from the instance id in each
answer): medians over rounds, a replica that answered no call in a round counting 0 there.
``p2c_p99_vs_healthy`` (the target's figure) is the median of the per-round ratios of
``p2c``'s p99 to ``p2c-healthy``'s in the same round (rounds where both had successful
calls), ``p2c_p99_vs_healthy_range`` their lowest and highest (``None`` without a round
to compare).
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.scenarios._common import Ctx, median

__all__ = ["run"]

NAME = "slow_replica"
SLOW_ID = "sr-slow"
DELAY_S = 0.050
DEFAULTS = ("p2c", "outlier", "retry")


async def run(ctx: Ctx) -> dict[str, Any]:
    """Start the six replicas, measure rr / p2c / p2c-healthy interleaved."""
    plan = ctx.plan
    registry = ctx.registry("replicas")
    specs = [("sr-a", "slowrep", 0.0), ("sr-b", "slowrep", 0.0), (SLOW_ID, "slowrep", DELAY_S),
             ("hr-a", "healthyrep", 0.0), ("hr-b", "healthyrep", 0.0),
             ("hr-c", "healthyrep", 0.0)]
    sem = asyncio.Semaphore(3)

    async def start(iid: str, service: str, delay: float) -> Any:
        async with sem:
            return await ctx.sup.server(iid, kind="mesh", service=service, registry=registry,
                                        delay_s=delay)

    await asyncio.gather(*(start(*s) for s in specs))
    client = await ctx.sup.client("cli-replicas")
    contenders = {"rr": ("slowrep", ()), "p2c": ("slowrep", DEFAULTS),
                  "p2c-healthy": ("healthyrep", DEFAULTS),
                  "p2c-decay1s": ("slowrep", (*DEFAULTS, "p2c_decay1s"))}
    for name, (service, layers) in contenders.items():
        await client.request({"op": "open", "name": name, "kind": "mesh", "service": service,
                              "registry": registry, "layers": list(layers), "expect": 3},
                             timeout_s=30)

    async def load(name: str, duration_s: float) -> dict[str, Any]:
        return await client.request(
            {"op": "load", "name": name, "concurrency": plan.slow_concurrency,
             "duration_s": duration_s, "max_calls": int(duration_s * 50_000) + 1000,
             "tags": True}, timeout_s=duration_s + 60)

    names = list(contenders)
    for name in names:  # warm-up: connections, and P2C's first latency samples
        await load(name, max(plan.warmup_s, plan.slow_warmup_s))
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    print(f"  {len(names)} contenders x {plan.slow_rounds} rounds of {plan.slow_round_s}s, "
          f"concurrency {plan.slow_concurrency}", flush=True)
    for r in range(plan.slow_rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            rounds[name].append(await load(name, plan.slow_round_s))
    out: dict[str, Any] = {}
    for name, rs in rounds.items():
        service = contenders[name][0]
        served = [r for r in rs if r["ok"]]  # latencies are those of successful calls
        out[name] = {
            "service": service,
            "layers": list(contenders[name][1]),
            "qps": median([r["qps"] for r in rs]),
            "p50_us": median([r["p50_us"] for r in served]) if served else None,
            "p99_us": median([r["p99_us"] for r in served]) if served else None,
            "errors": sum(sum(r["errors"].values()) for r in rs),
            "calls": sum(r["calls"] for r in rs),
            "shares": _shares([s[0] for s in specs if s[1] == service], rs),
            "slow_share": median([r["tags"].get(SLOW_ID, 0) / (sum(r["tags"].values()) or 1)
                                  for r in rs]),
        }
    # paired with the all-healthy p99 of the same round (the contenders are interleaved)
    ratios = [p["p99_us"] / h["p99_us"]
              for p, h in zip(rounds["p2c"], rounds["p2c-healthy"], strict=True)
              if p["ok"] and h["ok"] and h["p99_us"]]
    return {"slow_instance": SLOW_ID, "delay_ms": DELAY_S * 1000,
            "concurrency": plan.slow_concurrency, "rounds": plan.slow_rounds,
            "round_s": plan.slow_round_s, "contenders": out,
            "p2c_p99_vs_healthy": median(ratios) if ratios else None,
            "p2c_p99_vs_healthy_range": [min(ratios), max(ratios)] if ratios else None}


def _shares(instances: list[str], rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Each instance's median share of a round's answered calls (0 to 1), by instance id.

    Args:
        instances: the instances registered for the contender's service; one that
            answered no call in a round counts 0 for that round (as in ``slow_share``),
            so shares of one round sum to 1 and a replica the balancer avoids is not
            overstated by the rounds it was not avoided in.
        rounds: the load answers, each with ``tags`` (answered calls by instance id); an
            instance answering though not in ``instances`` is counted as well.
    """
    known = sorted(set(instances).union(*(r["tags"] for r in rounds)))
    out: dict[str, list[float]] = {iid: [] for iid in known}
    for r in rounds:
        total = sum(r["tags"].values()) or 1
        for iid in known:
            out[iid].append(r["tags"].get(iid, 0) / total)
    return {iid: median(v) for iid, v in out.items()}
