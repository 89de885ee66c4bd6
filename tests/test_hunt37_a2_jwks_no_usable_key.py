"""A JWKS document that holds keys of which the client can use none (every one of another
``use``, without a ``kid``, of an algorithm not accepted...) is logged as a warning once,
and again only when that changes: before, the refresh was logged at debug ("jwks
refreshed", keys=0) and every token was refused "token key id unknown" with nothing
saying why. A document that becomes usable again is logged as such (info)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from aiohttp import web

from meshkit._aio_http import start_app
from meshkit.auth import JWKSClient, JWKSClientOptions, KeySet

_EVENT = "jwks document holds no usable key"


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[dict[str, Any], str]]:
    """A JWKS endpoint on loopback serving whatever the test puts in ``doc["body"]``."""
    doc: dict[str, Any] = {}

    async def handle(_request: web.Request) -> web.Response:
        return web.json_response(doc["body"])

    app = web.Application()
    app.router.add_get("/jwks.json", handle)
    runner, port = await start_app(app, "127.0.0.1", 0)
    try:
        yield doc, f"http://127.0.0.1:{port}/jwks.json"
    finally:
        await runner.cleanup()


async def test_a_document_without_a_usable_key_is_warned_once(
        jwks: tuple[dict[str, Any], str]) -> None:
    """Two fetches of an unusable document: one warning (the count of keys and the
    algorithms taken); usable again: one info line; unusable again: warned again."""
    doc, url = jwks
    good = KeySet.generate().jwks()["keys"]
    unusable = [{**k, "use": "enc"} for k in good] + [{k: v for k, v in good[0].items()
                                                      if k != "kid"}]
    client = JWKSClient(url, JWKSClientOptions(min_refresh_interval_s=0.0))
    with structlog.testing.capture_logs() as logs:
        doc["body"] = {"keys": unusable}
        await client.refresh()
        await client.refresh()
        doc["body"] = {"keys": good}
        await client.refresh()
        doc["body"] = {"keys": unusable}
        await client.refresh()
        doc["body"] = {"keys": []}  # no key at all: nothing to warn about the keys
        await client.refresh()
    warned = [e for e in logs if e["event"] == _EVENT]
    assert len(warned) == 2, logs
    assert warned[0]["log_level"] == "warning" and warned[0]["keys"] == 2
    assert "ES256" in warned[0]["algorithms"]
    assert [e["log_level"] for e in logs if e["event"] == "jwks document usable again"] == [
        "info"]
