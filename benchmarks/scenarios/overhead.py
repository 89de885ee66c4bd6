"""Scenario 1, overhead by layer: raw grpc.aio -> dial()/serve() -> each policy -> full stack.

``defaults`` is ``dial()``/``serve()`` with their default options as a new user runs them
(P2C, retries armed, ejection, deadline admission, metrics, JSON access log, spans without
an exporter).

Unary calls with 64-byte requests on one server process per contender, from one client
process per contender, at each concurrency of the plan; QPS, p50/p99, CPU seconds per 1000
calls of the client and the server process, and peak RSS of both. Baseline: ``raw``.
``full-inline`` is ``full`` with ``TelemetryOptions(complete_after_response_max_in_flight=0)``:
span ends and access lines always before the response, to show what moving them off the
latency path under light load buys. ``full-1pct`` is ``full`` with tracing head-sampled at
1 % (Istio's default rate) instead of 100 %: what the stack costs as a mesh is usually run.
"""

from __future__ import annotations

from typing import Any

from benchmarks import stacks
from benchmarks.scenarios._common import Ctx, interleave, summarize

__all__ = ["CONTENDERS", "contender_specs", "run"]

NAME = "overhead"

CONTENDERS = ("raw", "mesh", "defaults", *(f"+{name}" for name in stacks.POLICY_LAYERS),
              "full", "full-inline", "full-1pct", "full+mtls")
"""Every contender name :func:`contender_specs` can return (``--contenders`` takes these)."""


def contender_specs(ctx: Ctx, *, subset: bool = True
                    ) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """``(name, kind, layers, tracing)`` of the overhead contenders available here (only
    the plan's ``overhead_only`` ones when ``subset``)."""
    full, missing = ctx.layers_available(stacks.FULL_LAYERS)
    for m in missing:
        ctx.note(f"layer {m} (left out of the full stack)")
    specs: list[tuple[str, str, tuple[str, ...], bool]] = [
        ("raw", "raw", (), False), ("mesh", "mesh", (), False),
        ("defaults", "mesh", ("defaults",), False)]
    specs += [(f"+{name}", "mesh", (name,), False) for name in stacks.POLICY_LAYERS
              if name in full]
    specs.append(("full", "mesh", full, False))
    inline, missing_inline = ctx.layers_available(("inline_completion",))
    if inline:  # the same stack with span end and access log before the response
        specs.append(("full-inline", "mesh", (*full, "inline_completion"), False))
    else:
        ctx.note(f"contender 'full-inline' skipped: {missing_inline[0]}")
    sampled, missing_sampled = ctx.layers_available(("sampled",))
    if sampled:  # the same stack tracing 1 % of calls, as a mesh runs in production
        specs.append(("full-1pct", "mesh", (*full, "sampled"), False))
    else:
        ctx.note(f"contender 'full-1pct' skipped: {missing_sampled[0]}")
    mtls, missing_tls = ctx.layers_available(("mtls",))
    if mtls:
        specs.append(("full+mtls", "mesh", (*full, "mtls"), False))
    else:
        ctx.note(f"contender 'full+mtls' skipped: {missing_tls[0]}")
    only = ctx.plan.overhead_only if subset else None
    return [s for s in specs if only is None or s[0] in only]


async def run(ctx: Ctx) -> dict[str, Any]:
    """Measure every contender, interleaved, at each concurrency of the plan."""
    plan = ctx.plan
    pairs = await ctx.pairs_for(contender_specs(ctx))
    by_conc: dict[str, Any] = {}
    sessions = max(1, min(plan.overhead_sessions, plan.rounds))
    for i, conc in enumerate(plan.concurrencies):
        print(f"  concurrency {conc}: {len(pairs)} contenders x {plan.rounds} rounds "
              f"of {plan.round_s}s" + (f" in {sessions} sessions of fresh processes"
                                       if sessions > 1 else ""), flush=True)
        rounds: dict[str, list[dict[str, Any]]] = {p.name: [] for p in pairs}
        for s in range(sessions):
            if s or (i and sessions > 1):  # each session on fresh processes
                pairs = await ctx.renew_pairs(pairs)
            share = plan.rounds // sessions + (s < plan.rounds % sessions)
            got = await interleave(pairs, concurrency=conc, rounds=share,
                                   round_s=plan.round_s, warmup_s=plan.warmup_s)
            for name, rs in got.items():
                rounds[name].extend(rs)
        base = rounds.get("raw")
        by_conc[str(conc)] = {name: summarize(rs, base) for name, rs in rounds.items()}
    contenders = []
    for p in pairs:
        contenders.append({
            "name": p.name, "kind": p.kind, "layers": list(p.layers),
            "summary": _describe(p.name, p.layers),
            "server_peak_rss_kb": p.server.peak_rss_kb(),
            "client_peak_rss_kb": p.client.peak_rss_kb(),
        })
    return {"baseline": "raw", "concurrencies": list(plan.concurrencies),
            "round_s": plan.round_s, "rounds": plan.rounds, "sessions": sessions,
            "request_bytes": 64,
            "contenders": contenders, "by_concurrency": by_conc,
            "skipped": {k: v for k, v in ctx.unavailable.items()}}


def _describe(name: str, layers: tuple[str, ...]) -> str:
    if name == "raw":
        return "plain grpc.aio server and channel"
    if name == "mesh":
        return "serve()/dial(): retry=None, outlier=None, RoundRobin"
    if len(layers) == 1:
        return stacks.LAYERS[layers[0]].summary
    return " + ".join(layers)
