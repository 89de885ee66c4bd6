"""``JWKSClient`` used from several event loops keeps to ``min_refresh_interval_s``.

A client serves any loop (its docstring: loops of several threads at once), but a loop
that found another loop's fetch in flight started a fetch of its own, outside the rate
limit, which the other loop then found in flight in turn: with tokens of unknown ``kid``
arriving on two loops (an attacker's random kids, or a rotation under load) and an
issuer slow to answer, the client fetched the JWKS back to back (hundreds of fetches in
two seconds with ``min_refresh_interval_s=10``: a storm on the issuer, just as it was
slow). A loop now waits for another loop's fetch in flight (bounded by
``fetch_timeout_s``) instead of starting one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web

from meshkit._aio_http import start_app
from meshkit.auth import JWKSClient, JWKSClientOptions, KeySet
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop

pytestmark = pytest.mark.timeout(30)

_ANSWER_S = 0.2


@pytest.fixture
def slow_jwks() -> Iterator[tuple[str, list[int]]]:
    """A JWKS endpoint on its own loop answering after ``_ANSWER_S``; the answers."""
    served = [0]
    document = KeySet.generate().jwks()

    async def handle(_request: web.Request) -> web.Response:
        served[0] += 1
        await asyncio.sleep(_ANSWER_S)
        return web.json_response(document)

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/jwks", handle)
        return await start_app(app, "127.0.0.1", 0)

    thread = LoopThread()
    runner, port = thread.run(start())
    try:
        yield f"http://127.0.0.1:{port}/jwks", served
    finally:
        thread.run(runner.cleanup())
        thread.close()


def test_loops_of_several_threads_share_one_fetch(slow_jwks: tuple[str, list[int]]) -> None:
    url, served = slow_jwks
    client = JWKSClient(url, JWKSClientOptions(min_refresh_interval_s=10))

    async def flood(n: int) -> None:
        end = time.monotonic() + 3 * _ANSWER_S
        calls = []
        i = 0
        while time.monotonic() < end:
            calls.append(asyncio.ensure_future(client.get_key(f"unknown-{n}-{i}")))
            i += 1
            await asyncio.sleep(0.01)
        assert await asyncio.gather(*calls) == [None] * len(calls)

    threads = [threading.Thread(target=run_loop, args=(flood(n),)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert client.fetches <= 2, client.fetches  # before: one per overlap, dozens
    assert served[0] <= 2


def test_a_fetch_of_a_stopped_loop_is_not_waited_for() -> None:
    """A loop stopped with its fetch in flight never ends that fetch: another loop's
    lookup then fetches at once (within the rate limit) instead of waiting
    ``fetch_timeout_s`` for it, at every lookup."""
    keys = KeySet.generate()
    arrived = threading.Event()
    release = threading.Event()

    async def handle(_request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 8)
        return web.json_response(keys.jwks())

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/jwks", handle)
        return await start_app(app, "127.0.0.1", 0)

    server, stopped = LoopThread(), LoopThread()
    try:
        runner, port = server.run(start())
        client = JWKSClient(f"http://127.0.0.1:{port}/jwks",
                            JWKSClientOptions(min_refresh_interval_s=0, fetch_timeout_s=5))
        asyncio.run_coroutine_threadsafe(client.get_key(keys.current.kid), stopped.loop)
        assert arrived.wait(8)
        stopped.loop.call_soon_threadsafe(stopped.loop.stop)  # its fetch never ends
        time.sleep(0.05)
        release.set()
        began = time.monotonic()
        assert run_loop(client.get_key(keys.current.kid)) is not None
        assert time.monotonic() - began < 3  # before: fetch_timeout_s (5 s) waited
        server.run(runner.cleanup())
    finally:
        release.set()
        server.close()
        stopped.close()
