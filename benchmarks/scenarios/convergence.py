"""Scenario 5, discovery convergence: a new instance joining, a drained one leaving.

Two replicas serve under steady load (closed loop, concurrency 4) through a channel; a third
process (already started and imported, waiting) is told to bind and register. Measured from
the moment its registration call returned (its own clock, ``time.monotonic``, shared by the
processes of a machine):

* ``join_s``: until the first call it served completed at the client;
* after ``join_obs_s``, it gets SIGTERM (meshkit drains: NOT_SERVING, deregister, keep
  serving the plan's ``drain_delay_s``, 1 s, then stop); ``leave_s``: from the SIGTERM to
  the start of the last call it served; ``failed``: calls that ended in an error meanwhile.

Registries: the local SQLite registry (watch polls every 0.25 s); etcd, a real single-node
etcd 3.4 (Debian's etcd-server) that the scenario starts on spare loopback ports with a
private data directory (watch streams through the v3 gateway); and the Consul watch path
(blocking queries) against the Consul agent *test double* of ``tests/discovery``, run inside
the runner process (no Consul agent can be installed here, so the Consul figures are the
double's, labelled "Consul (test double)"). Balancers: meshkit's defaults (``p2c``:
P2C/EWMA, ejection, retries), ``rr`` (round robin), which separates discovery from the
balancer's warm-up, and (diagnostic) ``p2c_rtt1ms``: the defaults with
``P2COptions(default_rtt_s=0.001)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from benchmarks.procs import ClientProc, ServerProc
from benchmarks.scenarios._common import Ctx, median

__all__ = ["run", "summarize"]

NAME = "convergence"
#: How each registry is named in tables and targets.
LABELS = {"local": "local", "etcd": "etcd (real, 1 node)", "consul": "Consul (test double)"}
BALANCERS = {"p2c": ("p2c", "outlier", "retry"), "rr": (),
             "p2c_rtt1ms": ("p2c", "outlier", "retry", "p2c_rtt1ms")}


def _analyse(timeline: list[list[Any]], new_id: str, t_reg: float,
             t_term: float) -> dict[str, Any]:
    served = [c for c in timeline if c[2] == new_id]
    first_done = min((c[0] + c[1] for c in served), default=None)
    last_start = max((c[0] for c in served), default=None)
    failed = [c for c in timeline if c[2].startswith("!")]
    return {
        # its first call can end before the worker reports the registration done
        # (watchers see the row first): served at once, 0, not -0.00
        "join_s": None if first_done is None else max(0.0, first_done - t_reg),
        "leave_s": None if last_start is None else last_start - t_term,
        "served_by_new": len(served),
        "calls": len(timeline),
        "failed": len(failed),
        "failed_codes": sorted({c[2][1:] for c in failed}),
    }


def summarize(name: str, reg: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One contender's row from its rounds (:func:`_analyse`'s): ``join_s_max`` (``None``
    when a round's new instance never served), ``join_s_median`` and ``leave_s_median``
    over the rounds that have them (``None`` when none has: not 0.0, the fastest),
    ``leave_s_max``, ``never_served``, ``failed_calls``, and ``registry``, its label,
    ``balancer`` and ``layers`` from ``name`` (``<registry>-<balancer>``)."""
    joins = [x["join_s"] for x in rs]
    served = [j for j in joins if j is not None]
    leaves = [x["leave_s"] for x in rs if x["served_by_new"] and x["leave_s"] is not None]
    balancer = name.split("-", 1)[1]
    return {
        "registry": reg,
        "registry_label": LABELS[reg],
        "balancer": balancer,
        "layers": list(BALANCERS[balancer]),
        "join_s_max": None if any(j is None for j in joins) else max(joins),
        "join_s_median": median(served) if served else None,
        "leave_s_max": max(leaves) if leaves else None,
        "leave_s_median": median(leaves) if leaves else None,
        "never_served": sum(1 for x in rs if not x["served_by_new"]),
        "failed_calls": sum(x["failed"] for x in rs),
        "rounds": rs,
    }


async def _round(ctx: Ctx, client: ClientProc, channel: str, registry: str, service: str,
                 new_id: str) -> dict[str, Any]:
    plan = ctx.plan
    srv = await ctx.sup.server(new_id, kind="mesh", service=service, registry=registry,
                               hold=True)
    duration = plan.join_lead_s + plan.join_obs_s + plan.leave_obs_s
    try:
        load = asyncio.create_task(client.request(
            {"op": "load", "name": channel, "concurrency": 4, "duration_s": duration,
             "max_calls": int(duration * 50_000), "timeline": True}, timeout_s=duration + 60))
        await asyncio.sleep(plan.join_lead_s)
        t_reg = await srv.go()
        await asyncio.sleep(max(0.0, t_reg + plan.join_obs_s - time.monotonic()))
        srv.signal(signal.SIGTERM)
        t_term = time.monotonic()
        res = await load
    finally:
        await srv.stop(3.0)
    return _analyse(res["timeline"], new_id, t_reg, t_term)


async def run(ctx: Ctx) -> dict[str, Any]:
    """Join and drain ``convergence_rounds`` instances per (registry, balancer)."""
    plan = ctx.plan
    from tests.discovery.consul_double import ConsulDouble
    from tests.support.etcd import EtcdCluster, etcd_binary

    wanted = plan.convergence_contenders
    consul = ConsulDouble()
    await consul.start()
    etcd: EtcdCluster | None = None
    started: list[ServerProc | ClientProc] = []  # stopped before their registries
    try:
        registries = {"local": (ctx.registry("convergence"), "conv"),
                      "consul": (f"consul://{consul.addr}", "convc")}
        if any(c.startswith("etcd-") for c in wanted):
            binary = etcd_binary()
            if binary is None:
                ctx.note("etcd contenders skipped: no etcd binary (scripts/install-etcd.sh)")
            else:
                # held before it starts: one that never gets healthy is killed below too
                etcd = EtcdCluster(binary, ctx.workdir / "etcd", size=1)
                await etcd.start()
                registries["etcd"] = (etcd.uri(), "conve")
        registries = {r: v for r, v in registries.items()
                      if any(c.startswith(f"{r}-") for c in wanted)}
        started += await asyncio.gather(*(
            ctx.sup.server(f"{reg}-base-{i}", kind="mesh", service=svc, registry=uri)
            for reg, (uri, svc) in registries.items() for i in (1, 2)))
        client = await ctx.sup.client("cli-convergence")
        started.append(client)
        contenders: list[tuple[str, str, str, str]] = []
        for reg, (uri, svc) in registries.items():
            for bal in BALANCERS:
                name = f"{reg}-{bal}"
                if name not in wanted:
                    continue
                await client.request({"op": "open", "name": name, "kind": "mesh",
                                      "service": svc, "registry": uri,
                                      "layers": list(BALANCERS[bal]), "expect": 2},
                                     timeout_s=30)
                await client.request({"op": "load", "name": name, "concurrency": 4,
                                      "duration_s": plan.channel_warmup_s,
                                      "max_calls": 20_000}, timeout_s=60)
                contenders.append((name, reg, uri, svc))
        print(f"  {len(contenders)} contenders x {plan.convergence_rounds} join+drain",
              flush=True)
        rows: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in contenders}
        for r in range(plan.convergence_rounds):
            for name, _reg, uri, svc in (contenders if r % 2 == 0 else contenders[::-1]):
                rows[name].append(await _round(ctx, client, name, uri, svc,
                                               f"{name}-new-{r}"))
        out = {name: summarize(name, reg, rows[name]) for name, reg, _uri, _svc in contenders}
        return {"join_obs_s": plan.join_obs_s, "leave_obs_s": plan.leave_obs_s,
                "drain_delay_s": ctx.sup.drain_delay_s, "contenders": out}
    finally:
        await ctx.tear_down(_close(started, consul, etcd))


async def _close(started: list[ServerProc | ClientProc], consul: Any,
                 etcd: Any) -> None:
    """Stop the scenario's processes, then the registries they are registered in: the
    base servers deregister as they stop, and with etcd or the Consul double already
    closed they waited out the stop's grace and SIGTERM's (2 s) instead."""
    await asyncio.gather(*(p.stop(1.0) for p in started), return_exceptions=True)
    with contextlib.suppress(Exception):
        await consul.close()
    if etcd is not None:
        etcd.close()
