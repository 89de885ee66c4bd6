"""What every scenario shares: the run's plan, its context, and interleaved rounds."""

from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import stacks
from benchmarks.procs import ClientProc, ServerProc, Supervisor, WorkerUnavailable

__all__ = ["PLANS", "Ctx", "Pair", "Plan", "interleave", "median", "summarize"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Sizes of one mode (``smoke``, ``quick``, ``full``); every loop is bounded by them.

    Attributes:
        rounds, round_s, warmup_s, concurrencies: overhead rounds per contender, seconds
            of load per round, warm-up seconds, client concurrencies.
        overhead_only: contenders of the overhead scenario (``None``: all of them).
        overhead_sessions: sets of fresh processes the overhead scenario's rounds are split
            over at each concurrency (1: one server and one client process per contender
            for the whole run). Identical processes differ (four identical clients against
            one server: median p50s of 657-677 us at one caller), and with one process pair
            per contender that difference stays in its column; fresh pairs per session
            average it out, as ``benchmarks.ab --sessions`` does.
        compare_concurrencies: concurrencies of the hand-assembled comparison.
        compare_rounds: its rounds per contender (``None``: ``rounds``); the full mode runs
            15, because its per-round ratios spread widely on a noisy host (0.97-1.44 in
            one run) and 7 rounds left the median at the mercy of a few.
        slow_rounds, slow_round_s, slow_concurrency: slow-replica rounds.
        failover_rounds, failover_pre_s, failover_post_s: SIGKILLs per contender and the
            load before/after each.
        convergence_rounds, join_obs_s, leave_obs_s: joins/drains per contender and how
            long each is watched.
        convergence_contenders: ``<registry>-<balancer>`` pairs of the convergence
            scenario (registries ``local``, ``etcd`` (real), ``consul`` (the test double);
            balancers ``p2c``, ``rr``).
        fanout_quick: fewer timeit loops in the fan-out scenario.
        join_lead_s: convergence: load before the new instance registers (0.3 s).
        channel_warmup_s: failover and convergence: the warm-up load of each channel
            (0.2 s).
        drain_delay_s: how long a meshkit server worker keeps serving after it deregistered
            on SIGTERM or at the end of its scenario (1 s; the smoke run, which only checks
            that every scenario runs, 0.2 s, so it does not wait a second per scenario).
        slow_warmup_s: the slow-replica scenario's shortest warm-up per contender (its
            warm-up is the longer of this and ``warmup_s``; 0.3 s, the smoke run 0.1 s).
        overlap_stops: stop a scenario's worker processes while the next scenario runs
            (their drains and exits overlap it; the run waits for them at its end)
            instead of before the next one starts. Only the smoke run, whose figures
            nobody reads, does: every other run measures with no worker exiting.
    """

    mode: str
    rounds: int
    round_s: float
    warmup_s: float
    concurrencies: tuple[int, ...] = (1, 32)
    overhead_only: tuple[str, ...] | None = None
    overhead_sessions: int = 1
    compare_concurrencies: tuple[int, ...] = (32,)
    compare_rounds: int | None = None
    slow_rounds: int = 2
    slow_round_s: float = 1.0
    slow_concurrency: int = 8
    failover_rounds: int = 1
    failover_pre_s: float = 1.0
    failover_post_s: float = 2.0
    failover_concurrency: int = 8
    convergence_rounds: int = 1
    join_obs_s: float = 1.5
    leave_obs_s: float = 2.0
    join_lead_s: float = 0.3
    channel_warmup_s: float = 0.2
    convergence_contenders: tuple[str, ...] = ("local-p2c", "local-rr", "etcd-p2c",
                                               "etcd-rr", "consul-p2c", "consul-rr")
    fanout_quick: bool = True
    drain_delay_s: float = 1.0
    slow_warmup_s: float = 0.3
    overlap_stops: bool = False


PLANS: dict[str, Plan] = {
    # the full-stack variants are in the smoke run so that one run of the test suite's
    # shows that every one of them builds (make bench measures them all)
    "smoke": Plan(mode="smoke", rounds=2, round_s=0.08, warmup_s=0.05,
                  overhead_only=("raw", "mesh", "defaults", "full", "full-inline",
                                 "full-1pct", "full+mtls"), slow_rounds=1,
                  slow_round_s=0.1, slow_warmup_s=0.1,
                  failover_pre_s=0.3, failover_post_s=0.7, join_obs_s=0.5, leave_obs_s=0.4,
                  join_lead_s=0.1, channel_warmup_s=0.05,
                  convergence_contenders=("local-p2c", "etcd-p2c", "consul-p2c"),
                  drain_delay_s=0.2, overlap_stops=True),
    "quick": Plan(mode="quick", rounds=3, round_s=0.2, warmup_s=0.1, slow_rounds=2,
                  slow_round_s=0.5, failover_pre_s=0.6, failover_post_s=1.4, join_obs_s=1.0,
                  leave_obs_s=1.3, convergence_contenders=("local-p2c", "local-rr",
                                                           "etcd-p2c", "consul-p2c")),
    "full": Plan(mode="full", rounds=7, round_s=1.0, warmup_s=0.5,
                 compare_concurrencies=(1, 32), compare_rounds=15, slow_rounds=5, slow_round_s=3.0,
                 failover_rounds=3, failover_pre_s=1.5, failover_post_s=3.0,
                 convergence_rounds=3, join_obs_s=2.0, leave_obs_s=2.5, fanout_quick=False,
                 convergence_contenders=("local-p2c", "local-rr", "local-p2c_rtt1ms",
                                         "etcd-p2c", "etcd-rr", "consul-p2c", "consul-rr")),
}


def median(values: Sequence[float]) -> float:
    """The median, 0.0 for no values."""
    return float(statistics.median(values)) if values else 0.0


def slug(name: str) -> str:
    """A registry-safe service-name fragment for a contender name (``full+mtls`` ->
    ``full-plus-mtls``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name.replace("+", "-plus-")).strip("-") or "x"


@dataclass
class Pair:
    """One contender as processes: a server worker and a client worker with channel ``main``.

    Attributes:
        name: contender name (``raw``, ``mesh``, ``+jwt``, ``full``, ``hand``...).
        kind: ``raw``, ``mesh`` or ``hand``; layers: meshkit layers (``mesh`` only).
        tracing: whether the stack traces (``Ctx.pair``'s ``tracing``).
    """

    name: str
    kind: str
    layers: tuple[str, ...]
    server: ServerProc
    client: ClientProc
    tracing: bool = True

    async def load(self, concurrency: int, duration_s: float, **extra: Any) -> dict[str, Any]:
        """One bounded load round on this pair; adds the server's CPU seconds
        (``server_cpu_s``): the difference of the process clock the server answers a
        ``{"op": "flush"}`` with before and after the round (every thread, at the clock's
        resolution: ``/proc``'s 10 ms ticks were +-7 % of a 0.2 s round's server CPU),
        the second read after it wrote the access-log lines it still buffered, so that
        the round's lines count in the round."""
        s0 = await self._server_cpu()
        res = await self.client.request(
            {"op": "load", "name": "main", "concurrency": concurrency,
             "duration_s": duration_s, "max_calls": int(duration_s * 100_000) + 1000, **extra},
            timeout_s=duration_s + 60)
        res["server_cpu_s"] = await self._server_cpu() - s0
        return res

    async def _server_cpu(self) -> float:
        """The server's CPU seconds once its buffered access-log lines are written (its
        answer to ``flush``; ``/proc``'s figure from a worker that does not give it)."""
        answer = await self.server.request({"op": "flush"}, timeout_s=30)
        cpu = answer.get("cpu_s")
        return float(cpu) if isinstance(cpu, int | float) else (self.server.cpu_s() or 0.0)


@dataclass
class Ctx:
    """A run: its plan, process supervisor, key material, work directory and notes."""

    plan: Plan
    sup: Supervisor
    secrets: stacks.Secrets
    workdir: Path
    notes: list[str] = field(default_factory=list)
    pairs: dict[str, Pair] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    generation: int = 0  # bumped by renew_pairs: the workers' names (and logs) differ
    stopping: list[asyncio.Future[Any]] = field(default_factory=list)

    async def tear_down(self, work: Awaitable[Any]) -> None:
        """Run ``work`` (stopping processes, closing registries) now, or with the plan's
        :attr:`Plan.overlap_stops` in a task that :meth:`stopped` awaits."""
        if self.plan.overlap_stops:
            self.stopping.append(asyncio.ensure_future(work))
        else:
            await work

    async def stopped(self) -> None:
        """Wait for the tear-downs :meth:`tear_down` left running (errors ignored)."""
        tasks, self.stopping = self.stopping, []
        await asyncio.gather(*tasks, return_exceptions=True)

    def note(self, text: str) -> None:
        """Record (and print) a note that goes into the results."""
        if text not in self.notes:
            self.notes.append(text)
            print(f"  note: {text}", flush=True)

    def registry(self, name: str, **query: float) -> str:
        """A local registry URI in the work directory."""
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"local://{self.workdir / 'registries' / name}" + (f"?{q}" if q else "")

    def layers_available(self, layers: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
        """The available subset of ``layers`` and notes on the others."""
        ok: list[str] = []
        missing: list[str] = []
        for name in layers:
            why = stacks.layer_note(name, self.secrets)
            if why is None:
                ok.append(name)
            else:
                missing.append(f"{name}: {why}")
        return tuple(ok), missing

    async def pair(self, name: str, kind: str, layers: tuple[str, ...] = (), *,
                   tracing: bool = True) -> Pair | None:
        """The started pair for contender ``name`` (started on first use, shared by the
        scenarios); ``None`` with a note when its stack cannot be built here."""
        if name in self.pairs:
            return self.pairs[name]
        if name in self.unavailable:
            return None
        registry = self.registry("pairs")
        service = f"bench-{slug(name)}"
        wname = slug(name) if not self.generation else f"{slug(name)}-{self.generation}"
        try:
            server = await self.sup.server(f"srv-{wname}", kind=kind, layers=layers,
                                           service=service, registry=registry,
                                           tracing=tracing)
            client = await self.sup.client(f"cli-{wname}")
            await client.request({"op": "open", "name": "main", "kind": kind,
                                  "layers": list(layers), "service": service,
                                  "registry": registry, "tracing": tracing,
                                  "address": f"127.0.0.1:{server.port}"}, timeout_s=30)
        except WorkerUnavailable as exc:
            self.unavailable[name] = str(exc)
            self.note(f"contender {name!r} skipped: {exc}")
            return None
        p = Pair(name, kind, layers, server, client, tracing)
        self.pairs[name] = p
        return p

    async def renew_pairs(self, pairs: Sequence[Pair]) -> list[Pair]:
        """Stop ``pairs``' processes and start fresh ones for the same contenders (the
        next session of :attr:`Plan.overhead_sessions`), in the same order."""
        await asyncio.gather(*(proc.stop(2.0) for p in pairs
                               for proc in (p.client, p.server)))
        for p in pairs:
            self.pairs.pop(p.name, None)
        self.generation += 1
        return await self.pairs_for([(p.name, p.kind, p.layers, p.tracing) for p in pairs])

    async def pairs_for(self, specs: Sequence[tuple[str, str, tuple[str, ...], bool]]
                        ) -> list[Pair]:
        """Start several pairs, two at a time (the machine has few cores), in order."""
        sem = asyncio.Semaphore(2)

        async def one(spec: tuple[str, str, tuple[str, ...], bool]) -> Pair | None:
            async with sem:
                return await self.pair(spec[0], spec[1], spec[2], tracing=spec[3])

        got = await asyncio.gather(*(one(s) for s in specs))
        return [p for p in got if p is not None]


async def interleave(pairs: Sequence[Pair], *, concurrency: int, rounds: int, round_s: float,
                     warmup_s: float) -> dict[str, list[dict[str, Any]]]:
    """Run ``rounds`` rounds over ``pairs``, alternating the order (A B C, C B A, ...),
    after one warm-up round each; returns every round's answer by contender."""
    for p in pairs:
        await p.load(concurrency, warmup_s)
    out: dict[str, list[dict[str, Any]]] = {p.name: [] for p in pairs}
    for r in range(rounds):
        for p in (pairs if r % 2 == 0 else list(reversed(pairs))):
            out[p.name].append(await p.load(concurrency, round_s))
    return out


def summarize(rounds: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Medians over rounds, and paired comparisons with the baseline's same rounds.

    Throughput, latencies and CPU per call are those of *successful* calls (each round's
    ``ok``): a failed call is counted in ``errors``, not served, so a stack failing calls
    fast reads slower, not faster. A round without a successful call has no latency or
    CPU per call and is left out of those medians and comparisons.

    Returns:
        ``qps`` (successful calls per second), ``p50_us``, ``p99_us``,
        ``client_cpu_s_per_1k``, ``server_cpu_s_per_1k`` (CPU seconds per 1000
        successful calls; these four ``None`` when no round had a successful call),
        ``calls`` (every call that ended),
        ``ok``, ``errors`` (``errors_by_status``: by status code name), ``rounds``, and
        with a baseline ``qps_ratio`` (median of per-round ratios; ``None`` when no
        baseline round served a call), ``qps_ratio_range``
        (their lowest and highest), ``added_p50_us``/``added_p99_us`` and
        ``added_cpu_us_per_call`` (client + server CPU per call over the baseline's,
        median of per-round differences, us; ``None`` when no round of both succeeded).
    """
    served = [r for r in rounds if r["ok"]]

    def per_1k(key: str) -> float | None:
        # no round served a call: no CPU per call (0.0 read as the cheapest contender)
        return median([r[key] / r["ok"] * 1000 for r in served]) if served else None

    def latency(key: str) -> float | None:
        return median([r[key] for r in served]) if served else None

    out: dict[str, Any] = {
        "qps": median([r["qps"] for r in rounds]),
        "p50_us": latency("p50_us"),
        "p99_us": latency("p99_us"),
        "client_cpu_s_per_1k": per_1k("cpu_s"),
        "server_cpu_s_per_1k": per_1k("server_cpu_s"),
        "calls": sum(r["calls"] for r in rounds),
        "ok": sum(r["ok"] for r in rounds),
        "errors": sum(sum(r["errors"].values()) for r in rounds),
        "errors_by_status": dict(sum((Counter(r["errors"]) for r in rounds), Counter())),
        "rounds": len(rounds),
        "qps_by_round": [round(r["qps"], 1) for r in rounds],
    }
    if base is not None:
        pairs = list(zip(rounds, base, strict=False))
        ratios = [r["qps"] / b["qps"] for r, b in pairs if b["qps"]]
        # no baseline round served a call: no ratio (not a median of none, 0.000x)
        out["qps_ratio"] = median(ratios) if ratios else None
        out["qps_ratio_range"] = [min(ratios), max(ratios)] if ratios else None
        both = [(r, b) for r, b in pairs if r["ok"] and b["ok"]]

        def added(diff: list[float]) -> float | None:
            return median(diff) if both else None

        def cpu_us(r: dict[str, Any]) -> float:
            return float((r["cpu_s"] + r["server_cpu_s"]) / r["ok"] * 1e6)

        out["added_p50_us"] = added([r["p50_us"] - b["p50_us"] for r, b in both])
        out["added_p99_us"] = added([r["p99_us"] - b["p99_us"] for r, b in both])
        out["added_cpu_us_per_call"] = added([cpu_us(r) - cpu_us(b) for r, b in both])
    return out
