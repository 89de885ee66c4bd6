"""Scenario 2, against what a user would assemble instead of meshkit.

``hand``: a plain ``grpc.aio`` server and channel with opentelemetry-instrumentation-grpc's
aio interceptors (100 % sampling, spans dropped by the exporter, as for meshkit's tracing
layer), a grpc-interceptor JWT check with PyJWT (ES256, decoded on every call, the usual
hand-written check), ``limits`` (sliding window counter, memory) and tenacity retries
(UNAVAILABLE, 3 attempts). Compared with meshkit's ``full`` stack (no TLS) on the same
echo service, interleaved; ``raw`` is shown for scale. When meshkit's tracing layer is not
available, ``hand-notrace`` (the same without OpenTelemetry) is measured too so that the
comparison with a meshkit stack lacking tracing is like for like.
"""

from __future__ import annotations

from typing import Any

from benchmarks.scenarios._common import Ctx, interleave, summarize
from benchmarks.scenarios.overhead import contender_specs

__all__ = ["run"]

NAME = "compare"


async def run(ctx: Ctx) -> dict[str, Any]:
    """Measure raw, hand, (hand-notrace) and full, interleaved."""
    plan = ctx.plan
    full_spec = next(s for s in contender_specs(ctx, subset=False) if s[0] == "full")
    specs: list[tuple[str, str, tuple[str, ...], bool]] = [
        ("raw", "raw", (), False), ("hand", "hand", (), True)]
    mesh_has_tracing = "tracing" in full_spec[2]
    if not mesh_has_tracing:
        specs.append(("hand-notrace", "hand", (), False))
        ctx.note("meshkit's full stack has no tracing layer yet: 'hand-notrace' (the "
                 "hand-assembled stack without OpenTelemetry) is the like-for-like contender")
    specs.append(full_spec)
    pairs = await ctx.pairs_for(specs)
    names = [p.name for p in pairs]
    by_conc: dict[str, Any] = {}
    n_rounds = plan.compare_rounds or plan.rounds
    for conc in plan.compare_concurrencies:
        print(f"  concurrency {conc}: {', '.join(names)}", flush=True)
        rounds = await interleave(pairs, concurrency=conc,
                                  rounds=n_rounds,
                                  round_s=plan.round_s, warmup_s=plan.warmup_s)
        res = {name: summarize(rs, rounds.get("raw")) for name, rs in rounds.items()}
        for hand in ("hand", "hand-notrace"):
            if hand in rounds and "full" in rounds:
                vs = summarize(rounds["full"], rounds[hand])
                res["full"][f"qps_ratio_vs_{hand}"] = vs["qps_ratio"]
                res["full"][f"qps_ratio_vs_{hand}_range"] = vs["qps_ratio_range"]
        by_conc[str(conc)] = res
    return {"baseline": "raw", "contenders": names, "mesh_has_tracing": mesh_has_tracing,
            "full_layers": list(full_spec[2]), "rounds": n_rounds, "round_s": plan.round_s,
            "by_concurrency": by_conc}

