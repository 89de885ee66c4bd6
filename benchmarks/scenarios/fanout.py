"""Scenario 6, fan-out scale: a service with 100 endpoints.

Runs in a fresh worker process (``python -m benchmarks._worker fanout``) so that its memory
figures do not depend on the runner:

* **pick cost**: ``timeit`` of one ``pick()`` plus its ``done()`` over 100 READY endpoints
  (and 3 for scale) for :class:`~meshkit.balancer.RoundRobin`, :class:`~meshkit.balancer.P2C`,
  P2C inside :class:`~meshkit.balancer.EjectingBalancer` (the default), smooth
  :class:`~meshkit.balancer.WeightedRoundRobin` and :class:`~meshkit.balancer.RingHash`
  (with a request key, 1024 distinct keys);
* **memory per endpoint**: 4 real ``grpc.aio`` servers in this process, 100 (and 10)
  instances registered in a local registry pointing at them, then ``tracemalloc`` (Python
  allocations) and ``VmRSS`` (everything, including gRPC's C core) around ``dial()`` until
  every endpoint is READY; per endpoint is the difference between 100 and 10 divided by
  90, so the channel's fixed cost drops out.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import timeit
import tracemalloc
from pathlib import Path
from typing import Any

import grpc

from benchmarks.scenarios._common import Ctx

__all__ = ["measure", "run"]

NAME = "fanout"


def _balancers() -> dict[str, Any]:
    from meshkit.balancer import (
        P2C,
        EjectingBalancer,
        OutlierOptions,
        RingHash,
        RoundRobin,
        WeightedRoundRobin,
    )

    return {
        "RoundRobin": RoundRobin,
        "P2C": P2C,
        "P2C+ejection (default)": lambda: EjectingBalancer(P2C(), OutlierOptions()),
        "WeightedRoundRobin": WeightedRoundRobin,
        "RingHash (keyed)": RingHash,
    }


def pick_costs(n: int, number: int, repeat: int) -> dict[str, float]:
    """Microseconds per ``pick()`` + ``done()`` for each balancer over ``n`` endpoints."""
    from meshkit.balancer import Endpoint, EndpointState
    from meshkit.discovery import Instance

    eps = []
    for i in range(n):
        ep = Endpoint(Instance(service="fan", instance_id=f"fan-{i}", host="127.0.0.1",
                               port=20000 + i))
        ep.state = EndpointState.READY
        eps.append(ep)
    keys = [f"user-{i}" for i in range(1024)]
    ok = grpc.StatusCode.OK
    out: dict[str, float] = {}
    for name, factory in _balancers().items():
        bal = factory()
        bal.update(eps)
        keyed = name.startswith("RingHash")
        counter = [0]

        def one(bal: Any = bal, keyed: bool = keyed, counter: list[int] = counter) -> None:
            counter[0] += 1
            _ep, done = bal.pick(keys[counter[0] & 1023] if keyed else None, ())
            done(ok, 0.001)

        times = timeit.repeat(one, number=number, repeat=repeat)
        out[name] = min(times) / number * 1e6
    return out


def _vm_rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _channel_memory(registry_uri: str, service: str, n: int) -> dict[str, float]:
    import meshkit

    gc.collect()
    rss0 = _vm_rss_kb()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    ch = meshkit.dial(service, registry=meshkit.registry_from_uri(registry_uri),
                      options=_dial_options())
    try:
        await ch.wait_for_endpoints(n, timeout_s=30.0)
        gc.collect()
        cur, peak = tracemalloc.get_traced_memory()
        rss1 = _vm_rss_kb()
    finally:
        tracemalloc.stop()
        await ch.close(0)
    return {"endpoints": n, "python_bytes": float(cur - base), "python_peak_bytes": float(peak),
            "rss_kb": float(rss1 - rss0)}


def _dial_options() -> Any:
    import dataclasses

    import meshkit

    if any(f.name == "insecure" for f in dataclasses.fields(meshkit.DialOptions)):
        return meshkit.DialOptions(insecure=True)
    return meshkit.DialOptions()


async def measure(workdir: Path, *, quick: bool, endpoints: int = 100) -> dict[str, Any]:
    """The whole fan-out scenario (run inside the fan-out worker)."""
    import meshkit
    from meshkit.discovery import Instance
    from tests.support import echo

    number, repeat = (5_000, 3) if quick else (50_000, 5)
    costs = {str(endpoints): pick_costs(endpoints, number, repeat),
             "3": pick_costs(3, number, repeat)}
    servers = []
    ports = []
    for i in range(4):
        s = grpc.aio.server()
        s.add_generic_rpc_handlers((echo.handler(f"fan-srv-{i}"),))
        ports.append(s.add_insecure_port("127.0.0.1:0"))
        await s.start()
        servers.append(s)
    uri = f"local://{workdir / 'registries' / 'fanout'}"
    reg = meshkit.registry_from_uri(uri)
    try:
        small = max(1, endpoints // 10)
        for count, service in ((small, "fan-small"), (endpoints, "fan-big")):
            for i in range(count):
                await reg.register(Instance(service=service, instance_id=f"{service}-{i}",
                                            host="127.0.0.1", port=ports[i % len(ports)]))
        await _channel_memory(uri, "fan-small", small)  # warm imports and caches
        m_small = await _channel_memory(uri, "fan-small", small)
        m_big = await _channel_memory(uri, "fan-big", endpoints)
        extra = endpoints - small
        per_ep_py = (m_big["python_bytes"] - m_small["python_bytes"]) / extra
        per_ep_rss = (m_big["rss_kb"] - m_small["rss_kb"]) * 1024 / extra
    finally:
        await reg.close()
        await asyncio.gather(*(s.stop(0) for s in servers))
    return {
        "endpoints": endpoints,
        "pick_us": costs,
        "timeit": {"number": number, "repeat": repeat, "statistic": "min"},
        "memory": {"small": m_small, "big": m_big,
                   "python_bytes_per_endpoint": per_ep_py,
                   "rss_bytes_per_endpoint": per_ep_rss,
                   "real_servers": len(servers)},
        "note": "pick cost: min over repeats of timeit; memory: (100 - 10 endpoints) / 90",
        "median_pick_us_100": statistics.median(costs[str(endpoints)].values()),
    }


async def run(ctx: Ctx) -> dict[str, Any]:
    """Run :func:`measure` in a fresh worker process."""
    args = ["fanout", "--workdir", str(ctx.workdir)]
    if ctx.plan.fanout_quick:
        args.append("--quick")
    print("  pick cost per call and memory per endpoint, in a fresh process", flush=True)
    return await ctx.sup.oneshot("fanout", args, timeout_s=180)
