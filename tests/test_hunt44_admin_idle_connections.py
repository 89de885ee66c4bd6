"""The admin server caps its open connections: idle ones beyond the cap are closed."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import CollectorRegistry

from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability import _admin as admin_module
from tests.support.wait import until


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF within 5 s)."""
    try:
        return await asyncio.wait_for(reader.read(1), 5.0) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_idle_connections_beyond_the_cap_are_closed() -> None:
    """Opening the cap plus ten idle connections gets the ten oldest closed by the
    server (not kept for the 75 s keep-alive), and a scrape still answers."""
    cap = admin_module._MAX_CONNECTIONS
    admin = AdminServer(AdminOptions(registry=CollectorRegistry()))
    port = await admin.start()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(cap + 10):
            conns.append(await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 5.0))
        oldest = await asyncio.gather(*(_closed_by_server(r) for r, _ in conns[:10]))
        assert all(oldest), oldest
        server = admin._runner.server if admin._runner is not None else None
        assert server is not None
        # a closed connection leaves the server's list once its task has ended
        await until(lambda: len(server.connections) <= cap, timeout_s=10,
                    what=f"at most {cap} connections kept")
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/healthz",
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200
    finally:
        for _, writer in conns:
            writer.close()
        await asyncio.wait_for(admin.stop(), 10)


async def test_a_connection_in_use_is_not_cut_mid_answer() -> None:
    """A keep-alive connection that keeps scraping under the cap is served each time."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry()))
    port = await admin.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.get(f"http://127.0.0.1:{port}/metrics",
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    assert resp.status == 200
                    await resp.read()
    finally:
        await asyncio.wait_for(admin.stop(), 10)


async def test_the_oldest_connection_mid_answer_finishes_its_answer() -> None:
    """The oldest connection, evicted while its request is handled, still gets its
    whole answer (closed after it, not cut)."""
    from aiohttp import web

    cap = admin_module._MAX_CONNECTIONS
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done\n")

    admin = AdminServer(AdminOptions(registry=CollectorRegistry()))
    admin.add_route("/slow", slow)
    port = await admin.start()
    conns: list[asyncio.StreamWriter] = []
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conns.append(writer)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 10)
        for _ in range(cap + 5):
            conns.append((await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 5.0))[1])
        release.set()
        answer = await asyncio.wait_for(reader.read(), 10)  # to EOF: closed after it
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done\n"), answer
    finally:
        release.set()
        for writer in conns:
            writer.close()
        await asyncio.wait_for(admin.stop(), 10)
