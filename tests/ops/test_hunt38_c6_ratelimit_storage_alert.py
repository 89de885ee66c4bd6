"""A rate limiter whose shared storage (Redis) fails must be visible in /metrics and
fire an alert.

What a user saw: with ``RateLimitOptions(storage_uri="async+redis://...")`` and Redis
gone, every call went through unlimited (``on_storage_error="allow"``, the default) or
was refused ``UNAVAILABLE`` (``"deny"``), and the only trace was a warning in the log:
no metric counted the storage's failures (``ServerStats`` had none), the server's RED
read all OK with no rate-limited call, and no alert of deploy/prometheus could fire,
while the limits the operator relies on (abuse, cost) were off. Shown with a real server
whose storage is a closed port, its /metrics fed to ``promtool test rules``.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.resilience.ratelimit import RateLimitOptions
from tests.ops.test_prometheus import exposition, promtool_test, scrape
from tests.ops.tools import binary
from tests.support.echo import mesh_echo, method
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(90)

_FAMILY = "meshkit_ratelimit_storage_errors_total"
_LABELS = 'job="meshkit",mesh_service="rld",mesh_instance="r1",service="rld"'


async def _failed_storage_count(tmp: Path) -> tuple[float, int]:
    """A real server limiting every call through Redis at a closed port: 12 calls, all
    admitted (fail open); ``(its storage errors on /metrics, ServerStats')``."""
    limits = RateLimitOptions(default_rule="100/second",
                              storage_uri=f"async+redis://127.0.0.1:{free_port()}",
                              storage_timeout_s=5.0)
    reg = LocalRegistry(LocalOptions(path=tmp / "reg", ttl_s=1.0, poll_interval_s=0.05))
    async with mesh_echo("rld", "r1", reg, rate_limit=limits) as srv:
        admin, address = srv.stats().admin, srv.stats().address
        assert admin and address
        async with grpc.aio.insecure_channel(address) as ch:
            for _ in range(12):  # fail open: each call answered
                await ch.unary_unary(method("Unary"))(b"x", timeout=10)
        text = await scrape(admin)
        stats = srv.stats()
    values = [v for labels, v in exposition(text, _FAMILY) if labels.get("service") == "rld"]
    assert values, f"no {_FAMILY} for the server: a failing limiter storage is invisible"
    return values[0], stats.rate_limit_storage_errors


async def test_a_failing_rate_limit_storage_is_counted_and_alerts(tmp_path: Path) -> None:
    """The storage's failures are on /metrics (as in ``ServerStats``): at least the
    breaker's three before it opens; such failures every minute fire
    ``MeshkitRateLimitStorageFailing`` after its ``for``; none, no alert."""
    binary("promtool")
    exported, stats = await _failed_storage_count(tmp_path)
    assert exported == stats >= 3, (exported, stats)
    series = f"{_FAMILY}{{{_LABELS}}}"
    rc, out = promtool_test(tmp_path, [
        {"interval": "1m", "input_series": [{"series": series,
                                              "values": f"0+{exported:g}x40"}],
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "MeshkitRateLimitStorageFailing",
              "exp_alerts": []},
             {"eval_time": "20m", "alertname": "MeshkitRateLimitStorageFailing",
              "exp_alerts": [{
                  "exp_labels": {"severity": "warning", "mesh_service": "rld"},
                  "exp_annotations": {"summary": (
                      "rld's rate limiter cannot use its storage: its limits are not "
                      "enforced (or, on_storage_error=deny, calls are refused "
                      "UNAVAILABLE)")}}]}]},
        {"interval": "1m", "input_series": [{"series": series, "values": "0x40"}],
         "alert_rule_test": [
             {"eval_time": "20m", "alertname": "MeshkitRateLimitStorageFailing",
              "exp_alerts": []}]},
    ])
    assert rc == 0, out
