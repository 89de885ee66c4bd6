"""A service that its callers cannot reach at all must fire an alert.

What a user saw: every instance of a service withdrew itself (NOT_SERVING under
``ServeOptions.follow_health``: a dependency down) or was gone from the registry; its
callers' calls all failed ``UNAVAILABLE`` "no endpoint is registered". No alert of
deploy/prometheus fired: the server-side alerts read the servers' own /metrics, and a
withdrawn or deregistered instance is no target of ``meshkit prometheus-targets`` (a
crashed one is kept ``--keep-failing-s``, then dropped, so ``MeshkitInstanceDown``
resolved while the service was still down); the callers' failures were recorded
(``meshkit:grpc_client_error_ratio:rate5m``, the "Client error ratio" panel) but no alert
read them. Shown with a real caller's /metrics fed to ``promtool test rules``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.ops.test_prometheus import exposition, promtool_test, rule_exprs, scrape
from tests.ops.tools import binary
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

_LABELS = 'job="meshkit",mesh_service="callerd",mesh_instance="c1"'
_FAMILY = "grpc_client_handled_total"


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


async def _caller_counts(tmp: Path) -> tuple[list[tuple[dict[str, str], float]],
                                             list[tuple[dict[str, str], float]]]:
    """A real caller's ``grpc_client_handled_total`` increases: (10 calls while the
    service serves, 20 calls once its only instance withdrew itself)."""
    opts = LocalOptions(path=tmp / "reg", ttl_s=1.0, poll_interval_s=0.05)
    server_reg, client_reg = LocalRegistry(opts), LocalRegistry(opts)
    srv = meshkit.MeshServer("downd", [add_echo("d1")], registry=server_reg,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="d1", drain_delay_s=0.0,
                                 grace_s=1.0, readmit_after_s=60.0))
    await srv.start()
    try:
        admin = srv.stats().admin  # the process's /metrics (the caller's families too)
        assert admin
        async with meshkit.dial("downd", registry=client_reg,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            call = ch.unary_unary(method("Unary"))
            t0 = await scrape(admin)
            for _ in range(10):
                await call(b"x", timeout=5)
            t1 = await scrape(admin)
            await srv.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await until(lambda: not any(e.present for e in ch.stats().endpoints),
                        timeout_s=10, what="the instance gone from the caller's view")
            codes = []
            for _ in range(20):
                try:
                    await call(b"x", timeout=5)
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)
            t2 = await scrape(admin)
    finally:
        await srv.drain()
        await server_reg.close()
        await client_reg.close()
    assert codes == ["UNAVAILABLE"] * 20, codes

    def grown(before: str, after: str) -> list[tuple[dict[str, str], float]]:
        old = {_key(labels): v for labels, v in exposition(before, _FAMILY)}
        return [(labels, v - old.get(_key(labels), 0.0))
                for labels, v in exposition(after, _FAMILY)
                if labels.get("grpc_method") == "Unary"]

    return grown(t0, t1), grown(t1, t2)


def _series(rows: list[tuple[dict[str, str], float]]) -> list[dict[str, Any]]:
    """Each series growing by its measured increase every minute, for 40 minutes, and the
    caller's target up (it is scraped)."""
    out: list[dict[str, Any]] = [{"series": f"up{{{_LABELS}}}", "values": "1x40"}]
    for labels, v in rows:
        sel = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
        out.append({"series": f"{_FAMILY}{{{_LABELS},{sel}}}", "values": f"0+{v:g}x40"})
    return out


async def test_callers_failing_every_call_to_a_withdrawn_service_fire_an_alert(
        tmp_path: Path) -> None:
    """The caller's calls all ``Unavailable`` (20 a minute): an alert names the caller and
    the method it cannot call, after its ``for``; the same caller while the service
    answered fires nothing."""
    binary("promtool")
    serving, withdrawn = await _caller_counts(tmp_path)
    assert {labels["grpc_code"]: v for labels, v in serving if v} == {"OK": 10}
    assert {labels["grpc_code"]: v for labels, v in withdrawn if v} == {"Unavailable": 20}
    alerts = [name for name in rule_exprs() if ":" not in name]
    rc, out = promtool_test(tmp_path, [
        {"interval": "1m", "input_series": _series(withdrawn),
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "MeshkitClientHighErrorRatio",
              "exp_alerts": []},
             {"eval_time": "20m", "alertname": "MeshkitClientHighErrorRatio",
              "exp_alerts": [{
                  "exp_labels": {"severity": "critical", "mesh_service": "callerd",
                                 "grpc_service": "meshkit.test.Echo",
                                 "grpc_method": "Unary"},
                  "exp_annotations": {
                      "summary": "callerd's calls to meshkit.test.Echo/Unary fail 100% "
                                 "(as the caller sees them: no endpoint, or the "
                                 "server's errors)"}}]}]},
        {"interval": "1m", "input_series": _series(serving),
         "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": []}
                             for name in alerts]},
    ])
    assert rc == 0, ("a service whose callers fail every call fires no alert:\n" + out)
