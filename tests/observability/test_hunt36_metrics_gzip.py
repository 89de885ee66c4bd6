"""``/metrics`` is gzip-compressed when the scraper accepts it, as prometheus-client's own
exposition server does (Prometheus sends ``Accept-Encoding: gzip`` on every scrape)."""

from __future__ import annotations

import gzip

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability._admin import _accepts_gzip


async def _get(admin: AdminServer, accept_encoding: str | None,
               method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    headers = {} if accept_encoding is None else {"Accept-Encoding": accept_encoding}
    async with (aiohttp.ClientSession(auto_decompress=False,
                                      skip_auto_headers=["Accept-Encoding"]) as http,
                http.request(method, admin.url + "/metrics", headers=headers) as resp):
        return resp.status, dict(resp.headers), await resp.read()


async def test_metrics_are_gzipped_when_accepted_and_plain_otherwise() -> None:
    """With ``Accept-Encoding: gzip`` the body is gzip (``Content-Encoding: gzip``) and
    decompresses to the exposition; without it, or with ``gzip;q=0``, it is plain; the
    answer says it varies by ``Accept-Encoding`` either way (a cache must not mix them)."""
    registry = CollectorRegistry()
    counter = Counter("hunt36_gzip_calls", "Calls.", ["method"], registry=registry)
    for i in range(200):
        counter.labels(f"method_{i}").inc(i)
    admin = AdminServer(AdminOptions(registry=registry, require_server=False))
    await admin.start()
    try:
        status, headers, body = await _get(admin, "gzip, deflate, br")
        plain_status, plain_headers, plain = await _get(admin, None)
        _, refused_headers, refused = await _get(admin, "gzip;q=0, identity")
        _, head_headers, head_body = await _get(admin, "gzip", method="HEAD")
    finally:
        await admin.stop()
    assert status == 200 and plain_status == 200
    assert headers.get("Content-Encoding") == "gzip", headers
    text = gzip.decompress(body).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["hunt36_gzip_calls"].samples) >= 200
    assert len(body) < len(plain) / 3
    assert "Content-Encoding" not in plain_headers
    assert "Content-Encoding" not in refused_headers
    assert "hunt36_gzip_calls_total" in plain.decode()
    assert "hunt36_gzip_calls_total" in refused.decode()
    for h in (headers, plain_headers, refused_headers):
        assert "Accept-Encoding" in h.get("Vary", ""), h
    assert head_headers.get("Content-Encoding") == "gzip" and head_body == b""


def test_accept_encoding_negotiation() -> None:
    """RFC 9110 12.5.3: codings compare case-insensitively, ``x-gzip`` is ``gzip``,
    ``*`` stands for one not named, ``q=0`` (or a malformed weight) refuses."""
    assert _accepts_gzip("gzip")
    assert _accepts_gzip("GZIP;Q=0.5")
    assert _accepts_gzip("deflate, x-gzip")
    assert _accepts_gzip("*")
    assert not _accepts_gzip("")
    assert not _accepts_gzip("identity")
    assert not _accepts_gzip("gzip;q=0")
    assert not _accepts_gzip("gzip;q=0.000")
    assert not _accepts_gzip("gzip;q=nan")
    assert not _accepts_gzip("gzip;q=0, *")  # gzip named and refused: * does not bring it
    assert not _accepts_gzip("*;q=0")
    assert not _accepts_gzip("br, deflate")
