"""The callers a memory:// rate limiter evicted (``RateLimitOptions.max_keys``) reach
``/metrics`` as ``meshkit_ratelimit_keys_evicted_total{service=...}``, read from the
server's snapshot (``ServerStats.rate_limit_keys_evicted``) at scrape time."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RateLimitOptions, by_metadata
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)

FAMILY = "meshkit_ratelimit_keys_evicted"
HELP = ("Callers a memory:// rate limiter forgot to keep at most RateLimitOptions.max_keys "
        "(each starts a fresh window at its next call).")


def evicted(prom: CollectorRegistry, service: str) -> float | None:
    """The scraped ``meshkit_ratelimit_keys_evicted_total`` of ``service`` (``None`` when
    absent), after checking the family parses as a counter with its help text."""
    found: float | None = None
    for fam in text_string_to_metric_families(generate_latest(prom).decode()):
        if fam.name != FAMILY:
            continue
        assert fam.type == "counter" and fam.documentation == HELP, (fam.type,
                                                                     fam.documentation)
        for s in fam.samples:
            if s.name == FAMILY + "_total" and s.labels == {"service": service}:
                found = s.value
    return found


async def _server(service: str, registry: LocalRegistry, prom: CollectorRegistry,
                  rate_limit: RateLimitOptions | None) -> meshkit.MeshServer:
    srv = meshkit.MeshServer(
        service, [add_echo("e1")], registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, drain_delay_s=0.0, grace_s=1.0, rate_limit=rate_limit,
            telemetry=TelemetryOptions(registry=prom, tracing=False, access_log=False)))
    await srv.start()
    return srv


async def test_evicted_callers_are_scraped_per_service(registry: LocalRegistry,
                                                       prom: CollectorRegistry) -> None:
    """max_keys=2, five callers with an x-user each: three were evicted, and the scrape
    says 3 (before the fix the family was missing); it stays 3 after the server ended."""
    service = f"evict-{uuid.uuid4().hex[:8]}"
    limits = RateLimitOptions(rules={method("Unary"): "100/minute"},
                              key=by_metadata("x-user"), max_keys=2)
    srv = await _server(service, registry, prom, limits)
    ch = meshkit.dial(service, registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=None))
    try:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        for i in range(5):
            assert await unary(b"x", timeout=5, metadata=(("x-user", f"u{i}"),)) == b"e1|x"
        assert evicted(prom, service) == 3
        assert srv.stats().rate_limit_keys_evicted == 3
        assert srv.stats().as_dict()["rate_limit_keys_evicted"] == 3  # /debug/mesh
    finally:
        await ch.close()
        await srv.drain()
    assert evicted(prom, service) == 3  # a counter: kept after the server ended


async def test_a_server_without_rate_limiting_reports_none(registry: LocalRegistry,
                                                            prom: CollectorRegistry) -> None:
    """No rate_limit: nothing evicted, the sample is 0 (or absent) and the family still
    parses."""
    service = f"plain-{uuid.uuid4().hex[:8]}"
    srv = await _server(service, registry, prom, None)
    try:
        assert evicted(prom, service) in (None, 0.0)
        assert srv.stats().rate_limit_keys_evicted == 0
    finally:
        await srv.drain()
