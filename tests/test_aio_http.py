"""start_app: the aiohttp start-up the JWKS and admin servers share."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from meshkit import _aio_http
from meshkit._aio_http import start_app


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hi")


def _app(cleaned: list[bool]) -> web.Application:
    app = web.Application()
    app.router.add_get("/", _hello)

    async def on_cleanup(_app: web.Application) -> None:
        cleaned.append(True)

    app.on_cleanup.append(on_cleanup)
    return app


async def test_start_app_serves_on_the_bound_port() -> None:
    """Port 0 binds a free port, which is returned; cleanup stops serving."""
    cleaned: list[bool] = []
    runner, port = await start_app(_app(cleaned), "127.0.0.1", 0)
    try:
        assert port > 0
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/") as resp:
            assert await resp.text() == "hi"
    finally:
        await runner.cleanup()
    assert cleaned == [True]


async def test_start_app_cleans_up_when_the_port_is_taken() -> None:
    """A bind failure raises OSError after the runner was cleaned up."""
    first, port = await start_app(_app([]), "127.0.0.1", 0)
    try:
        cleaned: list[bool] = []
        with pytest.raises(OSError):
            await start_app(_app(cleaned), "127.0.0.1", port)
        assert cleaned == [True]
    finally:
        await first.cleanup()


async def test_a_connection_that_sends_nothing_is_closed_after_the_keepalive_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection idle between requests (or before its first) is closed after
    ``_KEEPALIVE_S`` (75 s, ``web.run_app``'s default): with the runner's own default,
    3630 s, clients that open connections and send nothing held the process's file
    descriptors (shared with the gRPC server) for an hour. Patched small here."""
    assert _aio_http._KEEPALIVE_S == 75.0
    monkeypatch.setattr(_aio_http, "_KEEPALIVE_S", 0.3)
    runner, port = await start_app(_app([]), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert time.monotonic() - t0 < 3
        finally:
            writer.close()
    finally:
        await runner.cleanup()
