"""/metrics negotiates its format by the most specific media range of ``Accept`` (RFC
9110 12.5.1): a ``text/plain;q=0`` is not overridden by ``*/*``, and ``application/*``
takes OpenMetrics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from meshkit.observability import AdminOptions, AdminServer

_OM = "application/openmetrics-text"
_PROMETHEUS = ("application/openmetrics-text;version=1.0.0,"
               "application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

_CASES = [
    ("text/plain;q=0, */*;q=0.5", _OM),  # text refused: the other acceptable one
    ("application/*, text/plain;q=0.5", _OM),
    ("*/*;q=0.5, text/*;q=0", _OM),
    ("text/*;q=0.9, application/*;q=0.2", "text/plain"),
    (_PROMETHEUS, _OM),
    ("*/*", "text/plain"),  # a tie of wildcards: the text format (curl's default)
    ("", "text/plain"),
    ("application/openmetrics-text;q=0, */*", "text/plain"),
    ("text/plain, application/openmetrics-text", _OM),  # named both, equal: as before
    ("application/openmetrics-text;q=0.3, */*;q=0.9", "text/plain"),
]


@pytest.mark.parametrize(("accept", "kind"), _CASES,
                         ids=[f"case{i}" for i in range(len(_CASES))])
async def test_metrics_format_follows_the_most_specific_range(accept: str, kind: str) -> None:
    """The answer's Content-Type is the format the most specific ranges prefer, and its
    body parses as that format."""
    reg = CollectorRegistry()
    Counter("hunt44_accept", "a", registry=reg).inc()
    admin = AdminServer(AdminOptions(registry=reg))
    port = await admin.start()
    try:
        async with aiohttp.ClientSession(skip_auto_headers=["Accept"]) as http:
            headers = {"Accept": accept} if accept else {}
            async with http.get(f"http://127.0.0.1:{port}/metrics", headers=headers,
                                timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200
                ctype = resp.headers["Content-Type"]
                text = await resp.text()
        assert ctype.startswith(kind), (accept, ctype)
        parse = openmetrics_families if kind == _OM else text_families
        assert any(f.name == "hunt44_accept" for f in parse(text))
    finally:
        await asyncio.wait_for(admin.stop(), 10)
