"""Endpoints an mTLS channel cannot connect are on /metrics and alert.

What a user saw: a channel whose endpoint refuses its TLS handshake (another workload's
certificate, a CA not trusted, an expired certificate, a plaintext server) kept the
reason in ``EndpointStats.connect_error`` and a warning, but /metrics only counted the
endpoint ``meshkit_client_endpoints{state="FAILING"}``, as it counts any endpoint down or
restarting; no alert of deploy/prometheus read either, so an operator could not alert on
"a channel has endpoints failing their handshake". Now
``meshkit_client_endpoints_unconnectable{target}`` counts a channel's endpoints with a
``connect_error`` (no reason text as a label), and ``MeshkitEndpointsCannotConnect`` fires
on it after 5 minutes. A real grpc.aio mTLS server of another identity on loopback, its
scraped value fed to the real ``promtool test rules``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.auth.conftest import Pki, StartServer
from tests.auth.test_hunt39_h6_mtls_connect_error import _server_credentials
from tests.ops.test_prometheus import exposition, promtool_test
from tests.ops.tools import binary
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

_FAMILY = "meshkit_client_endpoints_unconnectable"


async def _scraped(pki: Pki, registry: LocalRegistry, start_server: StartServer
                   ) -> tuple[float, float]:
    """Two endpoints of ``whod``: one a server of another identity, one healthy; the
    channel's gauge once the first's reason is known, and after that server is gone and
    the endpoint deregistered."""
    bad = await start_server(_server_credentials(pki, "otherd"))
    good = await start_server(_server_credentials(pki, "whod"))
    w1 = Instance(service="whod", instance_id="w1", host="127.0.0.1", port=bad)
    await registry.register(w1)
    await registry.register(Instance(service="whod", instance_id="w2", host="127.0.0.1",
                                     port=good))
    prom = CollectorRegistry()
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None,
                               telemetry=TelemetryOptions(registry=prom, tracing=False,
                                                          access_log=False))
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        await until(lambda: any(e.connect_error for e in ch.stats().endpoints),
                    timeout_s=30, what="w1's connect_error")

        def gauge() -> float:
            values = [v for labels, v in exposition(generate_latest(prom).decode(), _FAMILY)
                      if labels.get("target") == "whod"]
            assert len(values) == 1, f"no single {_FAMILY} for whod: {values}"
            return values[0]

        failing = gauge()
        await registry.deregister(w1)
        await until(lambda: len([e for e in ch.stats().endpoints if e.present]) == 1,
                    timeout_s=30, what="w1 gone")
        return failing, gauge()


async def test_endpoints_that_cannot_be_connected_are_counted_and_alert(
        tmp_path: Path, pki: Pki, registry: LocalRegistry, start_server: StartServer,
) -> None:
    binary("promtool")
    failing, after = await _scraped(pki, registry, start_server)
    assert (failing, after) == (1, 0)
    series = f'{_FAMILY}{{job="meshkit",mesh_service="clientd",mesh_instance="c1",target="whod"}}'
    summary = ("clientd cannot connect 1 endpoint(s) of whod: the reason is in "
               "EndpointStats.connect_error, /debug/mesh and the channel's log")
    rc, out = promtool_test(tmp_path, [
        {"interval": "1m", "input_series": [{"series": series,
                                              "values": f"{failing:g}x30"}],
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "MeshkitEndpointsCannotConnect",
              "exp_alerts": []},
             {"eval_time": "10m", "alertname": "MeshkitEndpointsCannotConnect",
              "exp_alerts": [{"exp_labels": {"severity": "warning",
                                             "mesh_service": "clientd", "target": "whod"},
                              "exp_annotations": {"summary": summary}}]}]},
        {"interval": "1m", "input_series": [{"series": series, "values": f"{after:g}x30"}],
         "alert_rule_test": [
             {"eval_time": "10m", "alertname": "MeshkitEndpointsCannotConnect",
              "exp_alerts": []}]},
    ])
    assert rc == 0, out
