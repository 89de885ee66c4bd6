"""Two channels of one process dialing the same service (different options for different
callers, say) each get their own sparklines and retry-budget bar on the dashboard.

What a user saw: the page kept each card's history under the service's name, so the
second channel's card drew the first one's values: its RTT sparkline was the other
channel's, and its retry-budget bar was scaled by the other's budget (a channel with its
whole budget of 5 left drew a red, nearly empty bar beside one with 100 left).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.observability.test_dashboard import _browser
from tests.observability.test_dashboard_page import (  # noqa: F401
    _document,
    _Stand,
    fast_page,
    stand,
)


def _channel(budget_left: float, rtt_ms: float) -> dict[str, Any]:
    ch: dict[str, Any] = copy.deepcopy(_document("plain")["channels"][0])
    ch["service"] = "userd"
    ch["retry"]["budget_left"] = budget_left
    ch["endpoints"][0].update(instance_id="u1", rtt_ms=rtt_ms)
    return ch


async def test_each_channel_of_a_service_draws_its_own_history(
        stand: _Stand) -> None:  # noqa: F811
    """Budgets 100 and 5 (each full), RTTs that differ and change: the second card's
    bar is full and green, and each card's sparkline follows its own channel."""
    chromium, async_playwright = _browser()
    doc = _document("plain")
    doc["channels"] = [_channel(100.0, 10.0), _channel(5.0, 1.0)]
    stand.doc = doc
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(stand.url + "/")
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 3",
                                         timeout=10_000)
            # the second channel's RTT rises: only its own line may move
            doc = copy.deepcopy(doc)
            doc["channels"][1]["endpoints"][0]["rtt_ms"] = 50.0
            stand.doc = doc
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 6",
                                         timeout=10_000)
            cards = page.locator("div.channel")
            assert await cards.count() == 2
            bars = await cards.evaluate_all(
                "cs => cs.map(c => c.querySelector('.budget rect.bar').getAttribute('class'))")
            lines = await cards.evaluate_all(
                "cs => cs.map(c => c.querySelector('tr.endpoint polyline.spark')"
                ".getAttribute('points'))")
        finally:
            await browser.close()
    assert bars == ["bar ok", "bar ok"], bars

    def heights(points: str) -> list[float]:
        return [float(p.split(",")[1]) for p in points.split()]

    first, second = heights(lines[0]), heights(lines[1])
    assert len(set(first)) == 1, first  # its RTT never changed: a flat line
    assert len(set(second)) == 2, second  # 1 ms, then 50 ms
