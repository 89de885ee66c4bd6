"""The dashboard says why an mTLS endpoint cannot be connected.

An operator watching the live dashboard (``/``) saw an endpoint of an mTLS channel
``FAILING`` (another CA's certificate, an expired one, a plaintext server...) and
nothing more: the page drew no ``connect_error`` (``EndpointStats``, the channel's TLS
probe of the endpoint, :mod:`meshkit.auth._probe`), which ``/debug/mesh`` and the
dashboard's JSON carry. Now the reason is drawn under the endpoint's state badge, as
text (markup in it stays inert), and nothing is drawn for an endpoint without one.
In a real headless Chromium against a stand-in data endpoint.
"""

from __future__ import annotations

import pytest

from tests.observability.test_dashboard import _browser
from tests.observability.test_dashboard_page import (  # noqa: F401 (fixtures)
    EVIL,
    _document,
    _Stand,
    fast_page,
    stand,
)

pytestmark = pytest.mark.timeout(60)

_WHY = ("certificate verify failed: certificate has expired; the server's certificate "
        "spiffe://meshkit.test/svc/whod expired at 2026-01-01T00:00:00Z " + EVIL)


async def test_an_endpoint_s_connect_error_is_drawn_under_its_state(
        stand: _Stand) -> None:  # noqa: F811
    chromium, async_playwright = _browser()
    doc = _document("plain")
    failing = dict(doc["channels"][0]["endpoints"][0], instance_id="w1", state="FAILING",
                   connect_error=_WHY)
    ok = dict(doc["channels"][0]["endpoints"][0], instance_id="w2", state="READY",
              connect_error=None)
    doc["channels"][0]["endpoints"] = [failing, ok]
    stand.doc = doc
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
            await page.goto(stand.url + "/")
            await page.wait_for_function("() => Number(document.body.dataset.polls) >= 2",
                                         timeout=10_000)
            why = page.locator('tr.endpoint[data-instance="w1"] .why')
            assert await why.inner_text() == _WHY
            assert await why.get_attribute("title") == _WHY
            assert await page.locator('tr.endpoint[data-instance="w2"] .why').count() == 0
            assert await page.locator("img").count() == 0
        finally:
            await browser.close()
    assert not problems, problems
