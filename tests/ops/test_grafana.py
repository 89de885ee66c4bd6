"""deploy/grafana: the dashboard's structure and what its queries read, checked without
Grafana (not packaged in Debian bookworm). That every query returns data from a real
Prometheus scraping a live stack is checked in tests/ops/test_prometheus.py
(:func:`tests.ops.grafana.check_live`)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.ops.grafana import GRAFANA, dashboard, names_in, queries, raw_names, rule_exprs

DS = {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_is_a_grafana_model_on_the_datasource_variable() -> None:
    """schemaVersion, a uid and title, a ``datasource`` variable of type prometheus, and
    every non-row panel with a type, a grid position, and targets whose ``expr`` is
    queried through ``${datasource}``; ids unique, panels inside the 24-column grid and not
    overlapping."""
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["service"]["datasource"] == DS
    panels: list[dict[str, Any]] = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat"), p["type"]
        assert p["datasource"] == DS, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS and t["expr"].strip() and t["refId"], p["title"]
    assert sum(p["type"] != "row" for p in panels) >= 20


def test_queries_read_recording_rules_and_meshkit_metrics_only() -> None:
    """Each panel query reads recording rules that deploy/prometheus defines and meshkit's
    own families (grpc_*, meshkit_*) or ``up``; the RED panels are built on the rules."""
    rules = rule_exprs()
    used_rules: set[str] = set()
    for title, expr in queries():
        names = names_in(expr)
        assert names, f"panel {title!r} reads no metric: {expr}"
        used_rules |= {n for n in names if ":" in n}
        for name in raw_names(expr, rules):
            assert name == "up" or name.startswith(("grpc_", "meshkit_")), (title, name)
    while more := {n for r in used_rules for n in names_in(rules[r]) if ":" in n} - used_rules:
        used_rules |= more  # the rules those rules read
    assert used_rules == set(rules), set(rules) - used_rules  # every rule is on a panel


def test_names_in_leaves_out_functions_labels_and_keywords() -> None:
    """The metric-name extractor the checks rely on: functions, aggregations, grouping
    labels, matchers, ranges, numbers and set operators are not metric names."""
    expr = ('histogram_quantile(0.99, sum by (le, grpc_method) (rate(x_bucket{a=~"b|c"}[5m])))'
            ' / ignoring (i) group_left sum without (j) (y_total offset 5m) or 0 * ns:z:rate5m'
            " and on (k) time() - w")
    assert names_in(expr) == {"x_bucket", "y_total", "ns:z:rate5m", "w"}


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    """The datasource file provisions a Prometheus data source; the dashboard provider is
    a file provider (apiVersion 1, as Grafana's provisioning documents)."""
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "meshkit.yml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "meshkit.yml").read_text())
    assert dash["apiVersion"] == 1
    [provider] = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


@pytest.mark.parametrize("bad", ["sum(rate(nope:x:rate5m[5m]))"])
def test_an_undefined_recording_rule_is_reported(bad: str) -> None:
    """A ``ns:name:op`` series no rule records fails the resolution."""
    with pytest.raises(AssertionError, match="not a recording rule"):
        raw_names(bad)
