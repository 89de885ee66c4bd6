"""start_app: the aiohttp start-up the JWKS and admin servers share."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

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
