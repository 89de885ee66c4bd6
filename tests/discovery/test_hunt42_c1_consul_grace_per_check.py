"""ConsulRegistry: after an agent restarted without its state, a watch keeps each instance
the agent no longer lists for as long as that instance's own checks need to pass again,
not for the grace its own options imply.

69737a5e made ``fault_grace_s`` default to ``max(ttl_s, 3 * check_interval_s)`` with
``check="grpc"``/``"both"``. But that grace came from the WATCHER's options, while the
instances are registered by other processes: a client that only watches has the default
``check="ttl"`` (grace ``ttl_s``, 15 s), so it still dropped every live gRPC-checked
instance of the service after 15 s, for up to ``check_interval_s`` more, after an agent
restart without state. The watch now takes each kept instance's grace from the checks the
agent listed for it (``Checks[].Type`` and ``Definition``: a TTL check its ``TTL``, an
interval check such as ``GRPC`` ``3 * Interval``), the options' default when they say
nothing, bounded.

Scaled by 1/5 as in test_hunt42_consul_grpc_restart_grace.py (``ttl_s`` 3,
``check_interval_s`` 2): the owner's instance is passing again about 4 s after the restart;
the watcher's own (TTL) grace is 3 s.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshkit.discovery._consul import (
    CheckKind,
    ConsulOptions,
    ConsulRegistry,
    _checks_grace_s,
)
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble, go_duration_string
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


def _options(double: ConsulDouble, check: CheckKind, **kw: float) -> ConsulOptions:
    """The defaults' ratios (ttl_s 15, check_interval_s 10), scaled by 1/5."""
    return ConsulOptions(addr=double.addr, check=check,
                         ttl_s=3.0, check_interval_s=2.0, deregister_critical_after_s=60.0,
                         wait_s=5.0, backoff_base_s=0.05, backoff_max_s=0.2,
                         request_timeout_s=1.0, **kw)


async def _restart_right_after_a_lookup(double: ConsulDouble, instance_id: str) -> float:
    """The agent restarts without its state right after one of the keeper's lookups (down
    0.1 s: no lookup due then); returns the monotonic time it went down."""
    lookups = f"/v1/agent/service/{instance_id}"
    seen = sum(r.path == lookups for r in double.requests)
    await until(lambda: sum(r.path == lookups for r in double.requests) > seen,
                timeout_s=5.0, what="a lookup of the keeper")
    await double.stop()
    double.forget_all()
    double.reset_index(1)
    t0 = time.monotonic()
    await asyncio.sleep(0.1)
    await double.start()
    return t0


async def _grpc_health_server(service: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def test_a_ttl_watcher_keeps_a_live_grpc_checked_instance_until_it_passes() -> None:
    service = unique_service()
    server, port = await _grpc_health_server(service)
    try:
        async with ConsulDouble() as double:
            owner = ConsulRegistry(_options(double, "grpc"))
            reader = ConsulRegistry(_options(double, "ttl"))  # a client that only watches
            assert reader.options.fault_grace_s == 3.0
            a = make_instance(service, 1, port=port)
            watcher = Collector(reader, service)
            try:
                await owner.register(a)
                await watcher.until_set({a})
                for _ in range(20):
                    double.touch(service)  # an index well above a fresh agent's
                t0 = await _restart_right_after_a_lookup(double, a.instance_id)
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
                    f"a watcher with check='ttl' dropped the live gRPC-checked instance "
                    f"after the agent's restart (its owner had it passing again "
                    f"{back_s:.1f} s after it; the watcher's grace was "
                    f"{reader.options.fault_grace_s} s): yielded "
                    f"{[sorted(i.instance_id for i in s) for s in yielded]}")
                assert watcher.latest is not None and a in watcher.latest
                assert reader.status().kept_endpoints == 0  # listed again: its own
            finally:
                await watcher.stop()
                await owner.close()
                await reader.close()
    finally:
        await server.stop(None)


async def test_dead_instances_go_when_their_own_checks_grace_ends() -> None:
    """Owners that never come back: the TTL-checked instance goes after its TTL (3 s), the
    gRPC-checked one after three intervals (6 s), whatever the watcher's own options (gRPC:
    6 s for both before)."""
    service = unique_service()
    server, port = await _grpc_health_server(service)
    try:
        async with ConsulDouble() as double:
            ttl_owner = ConsulRegistry(_options(double, "ttl"))
            grpc_owner = ConsulRegistry(_options(double, "grpc"))
            reader = ConsulRegistry(_options(double, "grpc"))
            assert reader.options.fault_grace_s == 6.0
            a = make_instance(service, 1, port=port + 1 if port < 65535 else port - 1)
            b = make_instance(service, 2, port=port)
            watcher = Collector(reader, service)
            try:
                await ttl_owner.register(a)
                await grpc_owner.register(b)
                await watcher.until_set({a, b})
                await ttl_owner.close()  # both owners gone: nobody registers again
                await grpc_owner.close()
                for _ in range(20):
                    double.touch(service)
                await double.stop()
                double.forget_all()
                double.reset_index(1)
                t0 = time.monotonic()
                await double.start()
                await until(lambda: reader.status().kept_endpoints == 2, timeout_s=3.0,
                            what="the watch to keep both")
                await watcher.until_set({b}, timeout_s=5.0)
                ttl_gone_s = time.monotonic() - t0
                await watcher.until_set(set(), timeout_s=6.0)
                grpc_gone_s = time.monotonic() - t0
                assert 2.5 <= ttl_gone_s < 5.0, ttl_gone_s  # its TTL, 3 s
                assert grpc_gone_s >= 5.5, grpc_gone_s  # three intervals, 6 s
                assert reader.status().kept_endpoints == 0
            finally:
                await watcher.stop()
                await ttl_owner.close()
                await grpc_owner.close()
                await reader.close()
    finally:
        await server.stop(None)


async def test_a_grace_given_applies_to_every_instance() -> None:
    """``fault_grace_s`` given (1 s here) is not replaced by what a kept instance's checks
    imply (a gRPC check of 2 s: 6 s)."""
    service = unique_service()
    server, port = await _grpc_health_server(service)
    try:
        async with ConsulDouble() as double:
            owner = ConsulRegistry(_options(double, "grpc"))
            reader = ConsulRegistry(_options(double, "ttl", fault_grace_s=1.0))
            b = make_instance(service, 2, port=port)
            watcher = Collector(reader, service)
            try:
                await owner.register(b)
                await watcher.until_set({b})
                await owner.close()
                for _ in range(20):
                    double.touch(service)
                await double.stop()
                double.forget_all()
                double.reset_index(1)
                t0 = time.monotonic()
                await double.start()
                await until(lambda: reader.status().kept_endpoints == 1, timeout_s=3.0,
                            what="the watch to keep it")
                await watcher.until_set(set(), timeout_s=4.0)
                assert time.monotonic() - t0 < 4.0
            finally:
                await watcher.stop()
                await owner.close()
                await reader.close()
    finally:
        await server.stop(None)


def _entry_checks(service_id: str, *checks: dict[str, object]) -> list[dict[str, object]]:
    serf = {"CheckID": "serfHealth", "ServiceID": "", "Type": "", "Definition": {}}
    return [serf, *({"ServiceID": service_id, **c} for c in checks)]


_GRPC = {"Type": "grpc", "Definition": {"GRPC": "10.0.0.5:7000/orderd", "Interval": "10s",
                                        "Timeout": "10s",
                                        "DeregisterCriticalServiceAfter": "1m0s"}}
_TTL = {"Type": "ttl", "Definition": {"TTL": 15_000_000_000,
                                      "DeregisterCriticalServiceAfter": "1m0s"}}


@pytest.mark.parametrize(("checks", "expected"), [
    ((_GRPC,), 30.0),  # three intervals
    ((_TTL,), 15.0),  # its TTL, nanoseconds as the agent writes it
    ((_TTL, _GRPC, _GRPC), 30.0),  # check="both": the longest
    (({"Type": "grpc", "Definition": {"Interval": "1m0s"}},), 180.0),
    (({"Type": "http", "Definition": {"Interval": "1.5s"}},), 4.5),  # any interval check
    (({"Type": "ttl", "Definition": {"TTL": "250ms"}},), 0.25),  # a string read too
    (({"Type": "grpc", "Interval": "2s", "Definition": {}},), 6.0),  # the check's own
    (({"Type": "ttl", "Definition": {}},), 7.0),  # says nothing: the default
    (({"Type": "alias", "Definition": {"AliasService": "x"}}, _TTL), 15.0),
    ((), 7.0),  # no checks of its own (another node's: serfHealth only)
    (({"Type": "grpc", "Definition": {"Interval": "1h0m0s"}},), 600.0),  # bounded
    (({"Type": "grpc", "Definition": {"Interval": "soon"}},), 7.0),
    (({"Type": "grpc", "Definition": {"Interval": "0s"}},), 7.0),
    (({"Type": "ttl", "Definition": {"TTL": True}},), 7.0),
    (({"Type": "ttl", "Definition": "x"},), 7.0),
], ids=["grpc", "ttl-ns", "both", "grpc-minutes", "http", "ttl-string", "top-level-interval",
        "no-figure", "alias-and-ttl", "no-checks", "bounded", "bad-interval", "zero-interval",
        "bool-ttl", "definition-not-object"])
def test_the_grace_each_instance_s_checks_imply(
        checks: tuple[dict[str, object], ...], expected: float) -> None:
    assert _checks_grace_s(_entry_checks("orderd-1", *checks), "orderd-1", 7.0) == expected


def test_another_instance_s_checks_and_a_larger_default_count() -> None:
    # a check of another service ID is not this instance's
    assert _checks_grace_s(_entry_checks("other", _GRPC), "orderd-1", 7.0) == 7.0
    # the bound gives way to a longer options default
    hour = {"Type": "grpc", "Definition": {"Interval": "1h0m0s"}}
    assert _checks_grace_s(_entry_checks("orderd-1", hour), "orderd-1", 900.0) == 900.0
    assert _checks_grace_s(None, "orderd-1", 7.0) == 7.0


def test_the_double_writes_durations_as_consul_s_agent_does() -> None:
    """Go's ``time.Duration.String`` (``Interval``, ``Timeout``), which the watch reads."""
    cases = {2.0: "2s", 60.0: "1m0s", 3600.0: "1h0m0s", 1.5: "1.5s", 0.25: "250ms",
             61.5: "1m1.5s", 3725.0: "1h2m5s"}
    assert {s: go_duration_string(s) for s in cases} == cases
