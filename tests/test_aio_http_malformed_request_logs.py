"""Malformed HTTP requests to a meshkit HTTP server (the admin server, the JWKS server)
log one short warning a minute, not an ``ERROR`` with a traceback each.

What was wrong: aiohttp logs every request it cannot parse (a bad header line, a header
over its limits, a bad chunk) at ``ERROR`` with the whole traceback on ``aiohttp.server``,
and without logging configured Python writes each to stderr; any peer that reaches an
admin port (``0.0.0.0`` for Prometheus in a pod) could fill the logs, one traceback per
request, with what is the client's fault (``400``). ``start_app`` now gives aiohttp a
logger of its own (``meshkit.http``) on which such client errors are one warning a minute
(no traceback; how many were left out is in the next line); the server's own errors are
logged as aiohttp logs them."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from meshkit import _aio_http
from meshkit._aio_http import start_app

pytestmark = pytest.mark.timeout(30)

BAD = b"GET / HTTP/1.1\r\nHost: x\r\nthis is no header\r\n\r\n"


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_requests_log_one_warning_without_a_traceback(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # the first malformed request of this process's minute (another test's may have come)
    monkeypatch.setattr(_aio_http._CLIENT_ERRORS, "_last", -float("inf"))
    app = web.Application()
    app.router.add_get("/", ok)
    runner, port = await start_app(app, "127.0.0.1", 0)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(20):
                answer = await _send(port, BAD)
                assert b" 400 " in answer.split(b"\r\n", 1)[0], answer[:80]
            good = await _send(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    assert good.startswith(b"HTTP/1.1 200"), good[:80]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [(r.name, r.levelname, r.getMessage()[:80]) for r in loud]
    (line,) = loud
    assert line.levelno == logging.WARNING and line.exc_info is None, line
    assert "malformed HTTP request" in line.getMessage() and "127.0.0.1" in line.getMessage()
