"""/metrics?name[]=<series> answers only the series named, as prometheus_client's own
exposition does (``registry.restricted_registry``)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from meshkit.observability import AdminOptions, AdminServer


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("hunt44_a", "a", registry=reg).inc(3)
    Counter("hunt44_b", "b", registry=reg).inc(5)
    Gauge("hunt44_g", "g", registry=reg).set(7)
    return reg


async def _scrape(port: int, query: str, accept: str | None = None) -> tuple[int, str]:
    headers = {} if accept is None else {"Accept": accept}
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/metrics{query}", headers=headers,
            timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.text()


def _samples(text: str, om: bool) -> dict[str, float]:
    parse = openmetrics_families if om else text_families
    return {s.name: s.value for f in parse(text) for s in f.samples}


@pytest.mark.parametrize("om", [False, True], ids=["text-0.0.4", "openmetrics"])
async def test_name_filter_answers_only_the_named_series(om: bool) -> None:
    """``name[]=hunt44_a_total&name[]=hunt44_g`` answers those two series only (the
    meshkit families of the registry left out), in both formats."""
    admin = AdminServer(AdminOptions(registry=_registry()))
    port = await admin.start()
    accept = "application/openmetrics-text; version=1.0.0" if om else None
    try:
        status, text = await asyncio.wait_for(_scrape(
            port, "?name[]=hunt44_a_total&name%5B%5D=hunt44_g", accept), 15)
        assert status == 200
        assert _samples(text, om) == {"hunt44_a_total": 3.0, "hunt44_g": 7.0}
        status, text = await asyncio.wait_for(_scrape(port, "", accept), 15)
        everything = _samples(text, om)
        assert {"hunt44_a_total", "hunt44_b_total", "hunt44_g"} <= set(everything)
        assert len(everything) > 3  # unfiltered: the meshkit families too
    finally:
        await asyncio.wait_for(admin.stop(), 10)


async def test_name_filter_of_no_known_series_is_an_empty_exposition() -> None:
    """A ``name[]`` naming nothing served answers 200 with no sample (as
    prometheus_client does), not everything."""
    admin = AdminServer(AdminOptions(registry=_registry()))
    port = await admin.start()
    try:
        status, text = await asyncio.wait_for(_scrape(port, "?name[]=nope"), 15)
        assert status == 200 and _samples(text, False) == {}
    finally:
        await asyncio.wait_for(admin.stop(), 10)
