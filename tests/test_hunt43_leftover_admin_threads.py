"""Servers on two threads' event loops with an ephemeral admin port (the default,
``MESHKIT_ADMIN_PORT`` unset: 0) share the process's one admin server: both announce its
``admin_port``, and a scrape there counts each call once. Before, each loop started an
admin server of its own on another port, each serving the same process-wide registry: a
Prometheus scraping both targets counted every series twice. When the loop that started
it ends first, the admin server moves to a loop still serving, on the same port."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import grpc
import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import AdminOptions
from tests.faults._checks import metric
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(90)


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def _scrape_after_move(port: int) -> str:
    """:func:`_scrape` once the admin server has moved to this loop: its bind on the same
    port may not be done when the first loop's thread has ended (scrapes are refused in
    the move's window), so connection refusals are retried for up to 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            return await _scrape(port)
        except aiohttp.ClientConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def _started(text: str) -> float:
    return metric(text, "grpc_server_started_total", grpc_method="Unary")


async def _call(server: meshkit.MeshServer) -> None:
    assert server.instance is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.instance.port}") as ch:
        await ch.unary_unary(method("Unary"))(b"x", timeout=10)


def _run_two(tmp_path: Path, body: dict[str, object]) -> None:
    """Two threads, each ``asyncio.run()`` of a server ``a``/``b`` with an ephemeral admin
    port; ``body`` collects what they saw. ``a`` drains first when ``b_outlives``."""
    started = threading.Barrier(2, timeout=30)
    counted = threading.Barrier(2, timeout=30)
    a_gone = threading.Event()
    ports: dict[str, str | None] = {}
    errors: list[str] = []

    async def main(name: str) -> None:
        async with asyncio.timeout(60):
            reg = LocalRegistry(LocalOptions(path=tmp_path / f"reg{name}", ttl_s=5.0))
            server = meshkit.MeshServer(
                f"echo{name}", [add_echo(name)], registry=reg,
                options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=1.0,
                                             admin=AdminOptions(port=0)))
            await server.start()
            try:
                assert server.instance is not None
                ports[name] = server.instance.meta.get("admin_port")
                await asyncio.to_thread(started.wait)
                if name == "a":
                    port = int(ports["a"] or 0)
                    body["before"] = _started(await _scrape(port))
                await asyncio.to_thread(counted.wait)
                await _call(server)
                await asyncio.to_thread(counted.wait)
                if name == "a":
                    body["after"] = _started(await _scrape(int(ports["a"] or 0)))
                await asyncio.to_thread(counted.wait)
                if name == "b":  # a has drained and its loop ended: still served?
                    await asyncio.to_thread(a_gone.wait, 30)
                    body["served_after_a"] = _started(
                        await _scrape_after_move(int(ports["b"] or 0)))
            except BaseException as exc:
                errors.append(repr(exc))
                raise
            finally:
                await server.drain()
                await reg.close()

    def run(name: str) -> None:
        try:
            asyncio.run(main(name))
        finally:
            if name == "a":
                a_gone.set()

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(80)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    body["ports"] = ports


def test_two_loops_share_one_ephemeral_admin_server(tmp_path: Path) -> None:
    body: dict[str, object] = {}
    _run_two(tmp_path, body)
    ports = body["ports"]
    assert isinstance(ports, dict)
    assert ports["a"] is not None and ports["a"] == ports["b"], ports
    # one call per server: the one admin server's scrape counts two, each once
    assert body["after"] == body["before"] + 2  # type: ignore[operator]
    # the first loop ended: the admin server moved to b's loop, on the same port
    assert body["served_after_a"] == body["after"]
