"""An overloaded server that sheds most of its calls at its concurrency limit
(``ServerLimits.max_concurrent_rpcs``: ``RESOURCE_EXHAUSTED`` "server busy") must not look
healthy to the operator.

What a user saw: the request gate ends those calls before any code of the call runs, so
they are in neither ``grpc_server_started_total`` nor ``grpc_server_handled_total``
(README: only in ``meshkit_server_gate_refusals_total``); the server's RED read 100 % OK
while it refused 90 % of what arrived, no alert of deploy/prometheus fired (the error
ratio counts server failures among handled calls, the rate-limit alert the rate limiter
only) and no panel of deploy/grafana read the refusals. Shown with a real server
shedding, its /metrics fed to ``promtool test rules`` on the shipped rule files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.server import ServerLimits
from tests.ops import grafana
from tests.ops.test_prometheus import exposition, promtool_test, scrape
from tests.ops.tools import binary
from tests.support.echo import mesh_echo, method

pytestmark = pytest.mark.timeout(90)

_LABELS = 'job="meshkit",mesh_service="shedd",mesh_instance="s1"'
_FAMILIES = ("grpc_server_started_total", "grpc_server_handled_total",
             "meshkit_server_gate_refusals_total")


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


async def _shedding_server_counts(tmp: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What a real server with room for 2 calls exported for a burst of 20 concurrent
    1 s calls: per family, each series' increase over the burst (this server's
    refusals only; the RPC families, shared by the process's servers, as differences)."""
    reg = LocalRegistry(LocalOptions(path=tmp / "reg", ttl_s=1.0, poll_interval_s=0.05))
    async with mesh_echo("shedd", "s1", reg, limits=ServerLimits(max_concurrent_rpcs=2)) as srv:
        admin = srv.stats().admin
        address = srv.stats().address
        assert admin and address
        before = await scrape(admin)
        async with grpc.aio.insecure_channel(address) as ch:

            async def one() -> str:
                try:
                    await ch.unary_unary(method("Sleep"))(b"1000", timeout=20)
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name

            codes = await asyncio.gather(*(one() for _ in range(20)))
        after = await scrape(admin)
    shed = codes.count("RESOURCE_EXHAUSTED")
    assert shed >= 10 and codes.count("OK") >= 2, codes  # an overloaded server
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in _FAMILIES:
        old = {_key(labels): v for labels, v in exposition(before, family)}
        rows = []
        for labels, v in exposition(after, family):
            if family.startswith("meshkit_server_") and labels.get("service") != "shedd":
                continue
            rows.append((labels, v - old.get(_key(labels), 0.0)))
        out[family] = rows
    refused = {labels["reason"]: v for labels, v in out["meshkit_server_gate_refusals_total"]}
    assert refused.get("shed") == shed, refused
    # the server's RED: the shed calls are not there (every handled call OK)
    handled = {labels["grpc_code"]: v for labels, v in out["grpc_server_handled_total"]
               if v and labels.get("grpc_method") == "Sleep"}
    assert handled == {"OK": 20 - shed}, handled
    return out


def _series(counts: dict[str, list[tuple[dict[str, str], float]]],
            refusals_scale: float) -> list[dict[str, Any]]:
    """promtool input: each series growing by its measured increase every minute (such a
    burst a minute, for 40 minutes); the refusals scaled by ``refusals_scale``."""
    out = []
    for family, rows in counts.items():
        scale = refusals_scale if family.startswith("meshkit_server_gate") else 1.0
        for labels, v in rows:
            sel = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
            out.append({"series": f"{family}{{{_LABELS},{sel}}}",
                        "values": f"0+{v * scale:g}x40"})
    return out


async def test_a_server_shedding_most_calls_at_its_limit_fires_an_alert(tmp_path: Path) -> None:
    """The burst repeated every minute (90 % of calls shed) fires ``MeshkitServerShedding``
    after its ``for``, with the share shed in the summary; the same server when nothing is
    shed stays quiet."""
    binary("promtool")
    counts = await _shedding_server_counts(tmp_path)
    refused = sum(v for labels, v in counts["meshkit_server_gate_refusals_total"]
                  if labels["reason"] != "cardinality")
    started = sum(v for _, v in counts["grpc_server_started_total"])
    share = refused / (refused + started)
    rc, out = promtool_test(tmp_path, [
        {"interval": "1m", "input_series": _series(counts, 1.0),
         "alert_rule_test": [
             {"eval_time": "3m", "alertname": "MeshkitServerShedding", "exp_alerts": []},
             {"eval_time": "20m", "alertname": "MeshkitServerShedding", "exp_alerts": [{
                 "exp_labels": {"severity": "warning", "mesh_service": "shedd"},
                 "exp_annotations": {
                     "summary": f"shedd sheds {100 * share:.4g}% of the calls that arrive "
                                "(server busy: at its concurrency limit)"}}]}]},
        {"interval": "1m", "input_series": _series(counts, 0.0),
         "alert_rule_test": [
             {"eval_time": "20m", "alertname": "MeshkitServerShedding", "exp_alerts": []}]},
    ])
    assert rc == 0, ("a server refusing most calls 'server busy' fires no alert "
                     f"(its RED reads all OK):\n{out}")


def test_the_grafana_dashboard_shows_the_calls_a_server_sheds() -> None:
    """A panel of deploy/grafana reads ``meshkit_server_gate_refusals_total`` (through
    the recording rule), by reason."""
    rules = grafana.rule_exprs()
    panels = [(title, expr) for title, expr in grafana.queries()
              if "meshkit_server_gate_refusals_total" in grafana.raw_names(expr, rules)]
    assert panels, "no panel shows the calls servers shed"
    assert any("reason" in expr or "reason" in rules.get(name, "")
               for _, expr in panels for name in grafana.names_in(expr)), panels
