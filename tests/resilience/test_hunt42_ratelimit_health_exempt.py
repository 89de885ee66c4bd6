"""The rate limiter leaves the health service alone unless a rule names it.

``ServeOptions(rate_limit=RateLimitOptions(default_rule=...))`` limited every method the
server serves, ``grpc.health.v1.Health`` too. The callers of ``Check`` are the
orchestrator's probes (Kubernetes' kubelet, one address for every probe of a node;
Consul's gRPC check from its agent), ``Watch`` the mesh clients' health checking; none
of them is a client the limit is for, and what they are told decides whether the
replica serves at all:

* a per-caller ``default_rule`` lower than the probes' own rate (``"1/second"``, a
  liveness and a readiness probe a second from one kubelet) answered the second probe
  ``RESOURCE_EXHAUSTED``: a failed probe, the pod restarted or taken out of service;
* with ``on_storage_error="deny"`` a rate-limit storage outage (Redis down for a moment)
  answered every ``Check`` ``UNAVAILABLE``: every replica's probes and Consul checks
  failed at once, the whole service out of discovery for a Redis blip.

A rule that names the health service (``"grpc.health.v1.Health/*"``, ``"Health/Check"``)
still limits it. Real meshkit servers on loopback; the outage is a Redis URI of a port
nothing listens on.
"""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.discovery import LocalRegistry
from meshkit.resilience import RateLimitOptions
from tests.support.echo import mesh_echo, method

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on the way out: nothing listens


async def _checks(registry: LocalRegistry, options: RateLimitOptions,
                  n: int) -> tuple[list[grpc.StatusCode], grpc.StatusCode]:
    """``n`` health checks in a row from one client, then one echo ``Unary`` call: the
    checks' codes and the call's code."""
    async with mesh_echo("echo", "e1", registry, rate_limit=options) as srv, \
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        codes = []
        for _ in range(n):
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        try:
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
            unary = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            unary = exc.code()
    return codes, unary


async def test_probes_faster_than_the_default_rule_are_answered(
        registry: LocalRegistry) -> None:
    codes, _ = await _checks(registry, RateLimitOptions(default_rule="1/second"), 3)
    assert codes == [grpc.StatusCode.OK] * 3


async def test_a_storage_outage_under_deny_fails_no_health_check(
        registry: LocalRegistry) -> None:
    options = RateLimitOptions(
        default_rule="100/second", on_storage_error="deny",
        storage_uri=f"async+redis://127.0.0.1:{_closed_port()}", storage_timeout_s=0.5)
    codes, unary = await _checks(registry, options, 2)
    assert codes == [grpc.StatusCode.OK] * 2
    assert unary is grpc.StatusCode.UNAVAILABLE  # the service's own methods: as configured


@pytest.mark.parametrize("pattern", ["grpc.health.v1.Health/*", "Health/Check",
                                     "/grpc.health.v1.Health/Check"])
async def test_a_rule_naming_the_health_service_still_limits_it(
        registry: LocalRegistry, pattern: str) -> None:
    codes, unary = await _checks(
        registry, RateLimitOptions(rules={pattern: "1/minute"}), 2)
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert unary is grpc.StatusCode.OK


async def test_a_catch_all_glob_does_not_name_the_health_service(
        registry: LocalRegistry) -> None:
    codes, unary = await _checks(registry, RateLimitOptions(rules={"*": "1/minute"}), 2)
    assert codes == [grpc.StatusCode.OK] * 2
    assert unary is grpc.StatusCode.OK
