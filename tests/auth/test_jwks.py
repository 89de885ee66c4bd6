"""JWKS endpoint and the caching JWKS client (refresh rules with a fake clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import structlog
from aiohttp import web

from meshkit.auth import JWKSClient, JWKSClientOptions, JWKSError, JWKSServer, KeySet, parse_jwks
from tests.support.wait import until


class Tick:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served(keys: KeySet) -> AsyncIterator[JWKSServer]:
    """A JWKS server for ``keys`` on a free port."""
    server = JWKSServer(keys)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_server_publishes_public_keys_only(served: JWKSServer, keys: KeySet) -> None:
    """GET /.well-known/jwks.json returns the public JWKs with kid, alg and use, no 'd'."""
    async with aiohttp.ClientSession() as s, s.get(served.url) as resp:
        assert resp.status == 200 and "max-age" in resp.headers["Cache-Control"]
        doc = await resp.json()
    (jwk,) = doc["keys"]
    assert jwk["kid"] == keys.current.kid and jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk
    assert set(parse_jwks(doc)) == {keys.current.kid}


async def test_no_fetch_per_call(served: JWKSServer, keys: KeySet) -> None:
    """Many lookups of a known kid cost one fetch."""
    async with JWKSClient(lambda: served.url) as client:
        for _ in range(50):
            assert await client.get_key(keys.current.kid) is not None
        assert client.fetches == 1


async def test_unknown_kid_refresh_is_rate_limited(served: JWKSServer, keys: KeySet) -> None:
    """Unknown kids trigger at most one fetch per min_refresh_interval_s."""
    tick = Tick()
    opts = JWKSClientOptions(min_refresh_interval_s=10, refresh_interval_s=300, clock=tick)
    async with JWKSClient(lambda: served.url, opts) as client:
        await client.get_key(keys.current.kid)
        for i in range(20):
            assert await client.get_key(f"bogus-{i}") is None
        assert client.fetches == 1
        keys.rotate()
        assert await client.get_key(keys.current.kid) is None  # still rate-limited
        tick.now += 10
        assert await client.get_key(keys.current.kid) is not None
        assert client.fetches == 2


async def test_interval_refresh_in_background(served: JWKSServer, keys: KeySet) -> None:
    """A stale copy still answers at once and is refreshed in the background."""
    tick = Tick()
    opts = JWKSClientOptions(min_refresh_interval_s=1, refresh_interval_s=60, clock=tick)
    async with JWKSClient(lambda: served.url, opts) as client:
        old = keys.current.kid
        await client.get_key(old)
        new = keys.rotate().kid
        tick.now += 61
        assert await client.get_key(old) is not None
        await until(lambda: new in client.kids, timeout_s=5, what="background refresh")
        assert client.fetches == 2


async def test_async_url_provider_and_failure_keeps_keys(keys: KeySet) -> None:
    """The URL comes from an async provider; a failed refresh keeps the cached keys."""
    app = web.Application()
    state = {"fail": False}

    async def handle(_r: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=503)
        return web.json_response(keys.jwks())

    app.router.add_get("/jwks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def url() -> str:
        return f"http://127.0.0.1:{port}/jwks"

    tick = Tick()
    try:
        async with JWKSClient(url, JWKSClientOptions(min_refresh_interval_s=0, clock=tick)
                              ) as client:
            assert await client.get_key(keys.current.kid) is not None
            state["fail"] = True
            with structlog.testing.capture_logs() as logs:
                assert await client.get_key("unknown") is None
            assert await client.get_key(keys.current.kid) is not None
            assert any("503" in str(e.get("error")) for e in logs)
            with pytest.raises(JWKSError, match="503"):
                await client.refresh()
    finally:
        await runner.cleanup()


def test_parse_skips_unusable_keys(keys: KeySet) -> None:
    """Symmetric, encryption, kid-less and disallowed-algorithm keys are skipped."""
    good = keys.jwks()["keys"][0]
    doc = {"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {**good, "kid": "enc", "use": "enc"},
        {k: v for k, v in good.items() if k != "kid"},
        good,
    ]}
    assert set(parse_jwks(doc)) == {good["kid"]}
    assert parse_jwks(doc, frozenset({"EdDSA"})) == {}
    with pytest.raises(JWKSError):
        parse_jwks({"nokeys": 1})
