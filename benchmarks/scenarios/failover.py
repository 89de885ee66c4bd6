"""Scenario 4, failover: steady load on 3 replica processes, SIGKILL one.

Three server processes register as ``failover``; one client process holds two channels:

* ``default``: meshkit's defaults (P2C/EWMA, outlier ejection, retries; the echo method is
  declared idempotent, as reads are, so a call cut by the kill may be retried);
* ``rr-noretry``: round robin, no retries, no ejection (what the bare channel does).

Each round, per contender: closed-loop load for ``failover_pre_s``, SIGKILL of one replica,
load for ``failover_post_s`` more, then the replica is started again (same instance id) and
both channels wait for 3 ready endpoints. From every call's (start, latency, instance):

* ``failed``: calls that ended in an error;
* ``extra_p99_us``/``extra_max_us``: p99 and max latency of calls started in the second
  after the kill, minus the p99 before it;
* ``balanced_after_s``: from the kill to the start of the first 0.5 s (5 windows of
  100 ms) in which every window is balanced: none of its calls failed or went to the
  killed replica, its call rate is at least half the rate before the kill, and each
  surviving replica took at least 60 % of its fair share (30 % of 2). ``None`` when that
  never happened within the observation. For context, the same test is applied to the
  windows before the kill (3 replicas, 20 % each): ``unbalanced_windows_before`` shows how
  often the balancer is "unbalanced" by this measure in steady state, and
  ``last_unbalanced_window_end_s`` when the last unbalanced window after the kill ended.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from benchmarks.procs import ServerProc
from benchmarks.scenarios._common import Ctx, median

__all__ = ["analyse", "run", "summarize"]

NAME = "failover"
WINDOW_S = 0.1
STEADY_WINDOWS = 5
SHARE_OF_FAIR = 0.6
CONTENDERS = {"default": ("p2c", "outlier", "retry"), "rr-noretry": ()}


def _p(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), ``None`` for no value: not 0.0,
    which read as a measured p99 of an empty pre-kill list."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def analyse(timeline: list[list[Any]], t_kill: float, victim: str,
            survivors: list[str]) -> dict[str, Any]:
    """Failed calls, extra latency and time to balance from one round's call timeline
    (``[start_monotonic_s, latency_s, instance_id or "!CODE"]``). Latencies (``pre_*``,
    ``post_1s_p99_us``, ``extra_*``) are those of served calls, failed ones are counted in
    ``failed``; the post-kill figures are ``None`` when no call started in the second
    after the kill was served, the pre-kill ones (and the extra latencies) when none
    before it was, and so is ``balanced_after_s``: the balance is judged against the
    pre-kill call rate, which such a round did not measure."""
    t_begin = min((c[0] for c in timeline), default=t_kill)
    t_end = max((c[0] for c in timeline), default=t_kill)
    pre = [c for c in timeline if c[0] < t_kill]
    pre_span = max(t_kill - t_begin, 1e-9)
    pre_rate = len(pre) / pre_span
    # latencies are those of served calls: a refused call's near-zero latency would pull
    # the percentiles down for the contender that fails calls (failed ones are counted)
    pre_ok = [c[1] for c in pre if not c[2].startswith("!")]
    pre_p99 = _p(pre_ok, 0.99)
    pre_p50 = _p(pre_ok, 0.50)
    after = [c[1] for c in timeline
             if t_kill <= c[0] < t_kill + 1.0 and not c[2].startswith("!")]
    post_p99 = _p(after, 0.99)
    failed = [c for c in timeline if c[2].startswith("!")]
    to_victim_after = sum(1 for c in timeline if c[0] >= t_kill + 0.05 and c[2] == victim)
    def unbalanced(lo: float, replicas: list[str], dead: str | None) -> bool:
        calls = [c for c in timeline if lo <= c[0] < lo + WINDOW_S]
        ok = [c for c in calls if not c[2].startswith("!")]
        fair = 1.0 / len(replicas)
        return (len(ok) < len(calls) or len(calls) < 0.5 * pre_rate * WINDOW_S
                or (dead is not None and any(c[2] == dead for c in ok))
                or any(sum(1 for c in ok if c[2] == r) < SHARE_OF_FAIR * fair * len(ok)
                       for r in replicas))

    n_pre = int(pre_span // WINDOW_S)
    pre_bad = sum(unbalanced(t_begin + w * WINDOW_S, [victim, *survivors], None)
                  for w in range(n_pre))
    n_windows = int((t_end - t_kill) // WINDOW_S)
    bad = [unbalanced(t_kill + w * WINDOW_S, survivors, victim) for w in range(n_windows)]
    balanced_after: float | None = None
    for w in range(n_windows - STEADY_WINDOWS + 1 if pre_ok else 0):
        if not any(bad[w:w + STEADY_WINDOWS]):
            balanced_after = w * WINDOW_S
            break
    last_bad = max((w + 1 for w, b in enumerate(bad) if b), default=0) * WINDOW_S
    return {
        "calls": len(timeline),
        "failed": len(failed),
        "failed_codes": sorted({c[2][1:] for c in failed}),
        "pre_qps": pre_rate,
        "pre_p50_us": None if pre_p50 is None else pre_p50 * 1e6,
        "pre_p99_us": None if pre_p99 is None else pre_p99 * 1e6,
        "post_1s_p99_us": None if post_p99 is None else post_p99 * 1e6,
        "extra_p99_us": (None if post_p99 is None or pre_p99 is None
                         else (post_p99 - pre_p99) * 1e6),
        "extra_max_us": (max(after) - pre_p99) * 1e6 if after and pre_p99 is not None
                        else None,
        "pre_kill_served": len(pre_ok),
        "calls_to_victim_after_kill": to_victim_after,
        "balanced_after_s": balanced_after,
        "last_unbalanced_window_end_s": last_bad,
        "unbalanced_windows_after": sum(bad),
        "windows_after": n_windows,
        "unbalanced_windows_before": pre_bad,
        "windows_before": n_pre,
        "observed_s": t_end - t_kill,
    }


def _median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    """The median of ``key`` over the rounds that have it (``None``: no served call after
    the kill), ``None`` when none has."""
    values = [r[key] for r in rows if r[key] is not None]
    return median(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender's figures from its rounds (:func:`analyse`'s rows).

    A round that served no call before the kill has no pre-kill rate to judge its
    balance against (its ``balanced_after_s`` is ``None``, as a round that never balanced
    has): such rounds are counted in ``unmeasured_rounds`` and left out of
    ``balanced_after_s_max`` (the largest of the measured rounds; ``None`` when one of
    them never balanced, ``unbalanced_rounds`` counting those, or when none was
    measured)."""
    measured = [r["balanced_after_s"] for r in rows if r["pre_kill_served"]]
    before = sum(r["unbalanced_windows_before"] for r in rows)
    n_before = sum(r["windows_before"] for r in rows) or 1
    after = sum(r["unbalanced_windows_after"] for r in rows)
    n_after = sum(r["windows_after"] for r in rows) or 1
    return {
        "failed_calls": sum(r["failed"] for r in rows),
        "extra_p99_us": _median_of(rows, "extra_p99_us"),
        "extra_max_us": _median_of(rows, "extra_max_us"),
        "balanced_after_s_max": (None if not measured or any(b is None for b in measured)
                                 else max(measured)),
        "unbalanced_rounds": sum(1 for b in measured if b is None),
        # rounds with no call served before the kill: balance not measured
        "unmeasured_rounds": len(rows) - len(measured),
        "unbalanced_share_before": before / n_before,
        "unbalanced_share_after": after / n_after,
        "rounds": rows,
    }


async def run(ctx: Ctx) -> dict[str, Any]:
    """Kill a replica under load ``failover_rounds`` times per contender."""
    plan = ctx.plan
    registry = ctx.registry("failover")
    ids = ["fo-1", "fo-2", "fo-3"]
    servers: dict[str, ServerProc] = {}

    async def start(iid: str, gen: int) -> None:
        servers[iid] = await ctx.sup.server(f"{iid}-g{gen}", instance_id=iid, kind="mesh",
                                            service="failover", registry=registry)

    await asyncio.gather(*(start(i, 0) for i in ids))
    client = await ctx.sup.client("cli-failover")
    for name, layers in CONTENDERS.items():
        await client.request({"op": "open", "name": name, "kind": "mesh", "service": "failover",
                              "registry": registry, "layers": list(layers), "expect": 3},
                             timeout_s=30)
    for name in CONTENDERS:
        await client.request({"op": "load", "name": name, "concurrency": 4,
                              "duration_s": plan.channel_warmup_s, "max_calls": 20_000},
                             timeout_s=60)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in CONTENDERS}
    gen = 0
    duration = plan.failover_pre_s + plan.failover_post_s
    names = list(CONTENDERS)
    print(f"  {len(names)} contenders x {plan.failover_rounds} kills, load {duration}s each, "
          f"concurrency {plan.failover_concurrency}", flush=True)
    for r in range(plan.failover_rounds):
        for k, name in enumerate(names if r % 2 == 0 else names[::-1]):
            for n in names:
                await client.request({"op": "wait", "name": n, "count": 3, "timeout_s": 15},
                                     timeout_s=30)
            victim = ids[(r * len(names) + k) % len(ids)]
            load = asyncio.create_task(client.request(
                {"op": "load", "name": name, "concurrency": plan.failover_concurrency,
                 "duration_s": duration, "max_calls": int(duration * 50_000), "timeline": True},
                timeout_s=duration + 60))
            await asyncio.sleep(plan.failover_pre_s)
            servers[victim].signal(signal.SIGKILL)
            t_kill = time.monotonic()
            res = await load
            row = analyse(res["timeline"], t_kill, victim, [i for i in ids if i != victim])
            row["victim"] = victim
            results[name].append(row)
            await servers[victim].stop(2.0)
            gen += 1
            await start(victim, gen)
    out = {name: {"layers": list(CONTENDERS[name]), **summarize(rows)}
           for name, rows in results.items()}
    return {"replicas": 3, "concurrency": plan.failover_concurrency,
            "pre_s": plan.failover_pre_s, "post_s": plan.failover_post_s,
            "window_s": WINDOW_S, "contenders": out}
