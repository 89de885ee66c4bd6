"""/livez's probes of another event loop are bounded: however many probes arrive while
that loop is wedged, it holds one unrun callback from them (per admin server), not one
per probe."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability import _admin as admin_module
from tests.support.echo import add_echo
from tests.support.wait import until


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def test_probes_of_a_wedged_loop_queue_one_callback(
        tmp_path: Path, prom: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 /livez probes while another loop serving a server is wedged send that loop one
    callback (503 once it waited), and the loop, run again, answers 200 at the next
    probes."""
    monkeypatch.setattr(admin_module, "_WEDGED_S", 0.2)
    loop_b = asyncio.new_event_loop()
    thread = threading.Thread(target=loop_b.run_forever, name="loop-b", daemon=True)
    thread.start()
    pings = 0
    send = loop_b.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal pings
        if type(getattr(callback, "__self__", None)).__name__ == "_Ping":
            pings += 1
        return send(callback, *args, **kwargs)

    loop_b.call_soon_threadsafe = counting  # type: ignore[method-assign, assignment]

    async def start_b() -> meshkit.MeshServer:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=3.0))
        srv = meshkit.MeshServer("probed-svc", [add_echo("p1")], registry=reg,
                                 options=meshkit.ServeOptions(insecure=True,
                                                              drain_delay_s=0.0, grace_s=1.0))
        await srv.start()
        return srv

    def on_b(coro: Any) -> Any:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop_b))

    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    block = threading.Event()
    srv = await on_b(start_b())
    try:
        assert await _status(admin.url + "/livez") == 200
        await until(lambda: pings >= 1, what="a first ping")
        send(block.wait)  # loop b runs nothing more
        # the first ping may still be unrun: wait for the one sent after it
        before = pings
        statuses = [await _status(admin.url + "/livez") for _ in range(50)]

        async def failing() -> bool:
            return await _status(admin.url + "/livez") == 503

        await until(failing, timeout_s=10, what="/livez 503 for the wedged loop")
        assert pings - before <= 1, (pings, before, statuses)
        block.set()

        async def live() -> bool:
            return await _status(admin.url + "/livez") == 200

        await until(live, timeout_s=10, what="/livez 200 once the loop runs again")
    finally:
        block.set()
        await on_b(srv.drain())
        await on_b(srv.registry.close())
        await admin.stop()
        send(loop_b.stop)
        await asyncio.to_thread(thread.join, 10)
        loop_b.close()
