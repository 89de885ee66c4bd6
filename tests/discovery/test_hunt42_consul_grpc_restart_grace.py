"""ConsulRegistry: after an agent restarted without its state, a watch keeps the live
instances of owners with a gRPC check until they are listed again.

The watch keeps the instances the restarted agent no longer lists for ``fault_grace_s``,
"until their owners have registered again". Its default was ``ttl_s`` ("owners notice
within ``ttl_s / 3``"), which holds for TTL-checked owners only: an owner with
``check="grpc"`` notices the restart at its next lookup (up to ``check_interval_s``),
registers the instance again with its check critical (not claiming passing: the agent may
have reaped it for being critical), and the agent's first run of that check comes up to
another ``check_interval_s`` later (Consul staggers it within the ``Interval``), the run
itself taking up to its ``Timeout``. With the defaults (``ttl_s`` 15, ``check_interval_s``
10) the grace ended at 15 s while a live instance came back at up to 20 s or more: every
client of the service lost its endpoints for that gap. The default is now
``max(ttl_s, 3 * check_interval_s)`` for ``check="grpc"`` and ``"both"``.

Scaled by 1/5 here (``ttl_s`` 3, ``check_interval_s`` 2): the double runs a gRPC check
first a whole ``Interval`` after its registration (the stagger's worst case), and the
restart (0.1 s down) comes right after a keeper's lookup, so the owner's instance is
passing again about 4 s after the restart, where the grace was 3 s (now 6 s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshkit.discovery._consul import CheckKind, ConsulOptions, ConsulRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


def _options(double: ConsulDouble, check: CheckKind = "grpc") -> ConsulOptions:
    """The defaults' ratios (ttl_s 15, check_interval_s 10), scaled by 1/5."""
    return ConsulOptions(addr=double.addr, check=check,
                         ttl_s=3.0, check_interval_s=2.0, deregister_critical_after_s=60.0,
                         wait_s=5.0, backoff_base_s=0.05, backoff_max_s=0.2,
                         request_timeout_s=1.0)


def test_the_default_grace_covers_a_grpc_checked_owners_return() -> None:
    assert ConsulOptions(check="grpc").fault_grace_s == 30.0
    assert ConsulOptions(check="both").fault_grace_s == 30.0
    assert ConsulOptions(check="grpc", ttl_s=60).fault_grace_s == 60.0
    assert ConsulOptions(check="ttl").fault_grace_s == 15.0  # unchanged
    assert ConsulOptions(check="grpc", fault_grace_s=4).fault_grace_s == 4  # given: kept
    # worked out again from the new fields, as the ttl_s default is
    assert dataclasses.replace(ConsulOptions(), check="grpc").fault_grace_s == 30.0
    assert dataclasses.replace(ConsulOptions(check="grpc"), check="ttl").fault_grace_s == 15.0


async def test_a_live_grpc_checked_instance_is_kept_until_it_passes_again() -> None:
    service = unique_service()
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    try:
        async with ConsulDouble() as double:
            owner = ConsulRegistry(_options(double))
            reader = ConsulRegistry(_options(double))
            a = make_instance(service, 1, port=port)
            lookups = f"/v1/agent/service/{a.instance_id}"
            watcher = Collector(reader, service)
            try:
                await owner.register(a)
                await watcher.until_set({a})
                for _ in range(20):
                    double.touch(service)  # an index well above a fresh agent's
                # the restart comes right after one of the keeper's lookups
                seen = sum(r.path == lookups for r in double.requests)
                await until(lambda: sum(r.path == lookups for r in double.requests) > seen,
                            timeout_s=5.0, what="a lookup of the keeper")
                # the agent restarts without its state (down 0.1 s: no lookup due then)
                await double.stop()
                double.forget_all()
                double.reset_index(1)
                t0 = time.monotonic()
                await asyncio.sleep(0.1)
                await double.start()
                await until(lambda: reader.status().kept_endpoints == 1, timeout_s=3.0,
                            what="the watch to keep the instance")
                # the owner registers it again; its gRPC check passes at its first run
                await until(lambda: (c := double.service_check(a.instance_id, "grpc"))
                            is not None and c.status == "passing", timeout_s=8.0,
                            what="the instance passing again")
                back_s = time.monotonic() - t0
                await asyncio.sleep(0.3)  # the watch reads it
                yielded = []
                while not watcher.queue.empty():
                    yielded.append(watcher.queue.get_nowait())
                lost = [s for s in yielded if a not in s]
                assert not lost, (
                    f"the live instance was dropped after the agent's restart (its owner "
                    f"had it passing again {back_s:.1f} s after it; the grace was "
                    f"{reader.options.fault_grace_s} s): yielded "
                    f"{[sorted(i.instance_id for i in s) for s in yielded]}")
                assert watcher.latest is not None and a in watcher.latest
            finally:
                await watcher.stop()
                await owner.close()
                await reader.close()
    finally:
        await server.stop(None)
