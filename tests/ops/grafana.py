"""deploy/grafana's dashboard as the tests see it: its queries with the variables filled
in, the metric names each one reads (recording rules resolved to their own expressions),
and the live check that tests/ops/test_prometheus.py runs against its real Prometheus."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "meshkit.json"
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
# What Grafana puts in place of the dashboard's variables when "All" is chosen; the test
# Prometheus scrapes every second, so a minute spans plenty of samples.
VARIABLES = {"${service}": ".*", "$service": ".*", "$__rate_interval": "1m"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    return dict(json.loads(DASHBOARD.read_text()))


def fill(expr: str) -> str:
    """``expr`` with the dashboard's variables as Grafana fills them for "All"."""
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown variable in {expr!r}"
    return expr


def queries() -> Iterator[tuple[str, str]]:
    """(panel title, filled PromQL) for every target of every panel."""
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], fill(target["expr"])


def rule_exprs() -> dict[str, str]:
    """Every recording rule's name -> its expression."""
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out[rule["record"]] = rule["expr"]
    return out


def names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label
    matchers, ranges and grouping clauses that are not functions, aggregations or
    keywords."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}|\[[^]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    found = re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", bare)
    return {m[1] for m in found if not m[2] and m[1].lower() not in _KEYWORDS}


def raw_names(expr: str, rules: dict[str, str] | None = None) -> set[str]:
    """The scraped metrics ``expr`` reads, recording rules replaced by what they read.

    Raises:
        AssertionError: a ``ns:name:op`` name no recording rule defines.
    """
    rules = rule_exprs() if rules is None else rules
    out: set[str] = set()
    for name in names_in(expr):
        if ":" in name:
            assert name in rules, f"{name} is not a recording rule"
            out |= raw_names(rules[name], rules)
        else:
            out.add(name)
    return out


async def _query(http: aiohttp.ClientSession, prom_url: str, expr: str) -> list[Any]:
    """The instant vector ``expr`` evaluates to now (the API's error is the assertion)."""
    async with http.get(f"{prom_url}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", (expr, body)
    assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
    return list(body["data"]["result"])


def _finite(result: list[Any]) -> bool:
    """Whether some series of ``result`` has a finite value (not NaN, not +-Inf)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


async def check_live(http: aiohttp.ClientSession, prom_url: str, served: set[str],
                     services: set[str]) -> None:
    """Every dashboard query reads only metrics the stack ``served`` (Prometheus' own
    ``up`` aside) and, in the Prometheus at ``prom_url`` scraping a stack that took
    traffic, returns series with a finite value; the ``service`` variable's query lists
    ``services``. Waits (a few seconds at most) for rates over fresh samples."""
    rules = rule_exprs()
    for title, expr in queries():
        missing = raw_names(expr, rules) - served - {"up"}
        assert not missing, f"panel {title!r} reads metrics the stack does not serve: {missing}"
    for title, expr in queries():

        async def has_data(expr: str = expr) -> bool:
            return _finite(await _query(http, prom_url, expr))

        await until(has_data, timeout_s=20, interval_s=0.2,
                    what=f"data for panel {title!r}: {expr}")
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "service")
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
    assert match, variable["query"]
    async with http.get(f"{prom_url}/api/v1/label/{match[2]}/values",
                        params={"match[]": match[1]}) as resp:
        body = await resp.json()
    assert set(body["data"]) == services, body
