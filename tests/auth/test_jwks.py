"""JWKS endpoint and the caching JWKS client (refresh rules with a fake clock)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import structlog
from aiohttp import web

from meshkit.auth import JWKSClient, JWKSClientOptions, JWKSError, JWKSServer, KeySet, parse_jwks
from meshkit.errors import ConfigError
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve_jwks() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler at /jwks on a free port; returns its URL; stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/jwks", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/jwks"

    yield start
    for r in runners:
        await r.cleanup()


def in_pieces(body: bytes, *, pieces: int = 2, content_length: bool = True) -> Handler:
    """A handler sending ``body`` in ``pieces`` writes a moment apart (as TCP segments of a
    larger document arrive over a network), with Content-Length or else chunked."""

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if content_length:
            resp.content_length = len(body)
        await resp.prepare(request)
        step = -(-len(body) // pieces)
        try:
            for i in range(0, len(body), step):
                await resp.write(body[i:i + step])
                await asyncio.sleep(0.05)  # splits the body across reads; awaits no condition
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading (a document over its limit)
        return resp

    return handle


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_document_arriving_in_pieces_is_read_whole(
        keys: KeySet, serve_jwks: Callable[[Handler], Awaitable[str]],
        content_length: bool) -> None:
    """A JWKS body that arrives in several reads is read to its end, not cut at what was
    buffered when the client first looked (which would lose every key)."""
    keys.rotate()
    doc = json.dumps(keys.jwks()).encode()
    url = await serve_jwks(in_pieces(doc, pieces=3, content_length=content_length))
    async with JWKSClient(url, JWKSClientOptions(fetch_timeout_s=3)) as client:
        await client.refresh()
        assert client.kids == {k.kid for k in keys.keys}


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_document_over_max_bytes_refused(
        keys: KeySet, serve_jwks: Callable[[Handler], Awaitable[str]],
        content_length: bool) -> None:
    """A document over max_document_bytes is refused, declared (Content-Length) or not
    (chunked, arriving in pieces), and cached keys stay."""
    doc = json.dumps({**keys.jwks(), "pad": "x" * 2000}).encode()
    url = await serve_jwks(in_pieces(doc, pieces=3, content_length=content_length))
    async with JWKSClient(url, JWKSClientOptions(max_document_bytes=1024)) as client:
        with pytest.raises(JWKSError, match="exceeds 1024 bytes"):
            await client.refresh()
        assert client.kids == frozenset()


def test_max_document_bytes_validated() -> None:
    """max_document_bytes below 1024 is refused when the options are built, quoted."""
    with pytest.raises(ConfigError, match="100"):
        JWKSClientOptions(max_document_bytes=100)
