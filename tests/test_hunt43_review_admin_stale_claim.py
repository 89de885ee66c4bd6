"""A loop that stopped (not closed) while it started the process's shared ephemeral-port
admin server (``_SharedAdmin``'s claim) does not make the next loop's server wait for
it: a loop not running starts nothing. Before, the next loop waited the whole 30 s bound
on that claim before it started an admin server of its own."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from meshkit.observability import AdminOptions, AdminServer
from meshkit.server import _SharedAdmin

pytestmark = pytest.mark.timeout(120)


def test_claim_of_a_stopped_loop_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    options = AdminOptions(host="127.0.0.1", port=0, require_server=False)
    entered = threading.Event()
    start = AdminServer.start
    stuck = asyncio.new_event_loop()

    async def stuck_start(self: AdminServer) -> int:
        if asyncio.get_running_loop() is stuck:
            entered.set()
            await asyncio.Event().wait()  # never: its loop stops meanwhile
        return await start(self)

    monkeypatch.setattr(AdminServer, "start", stuck_start)
    pending = stuck.create_task(_SharedAdmin.acquire(options, CollectorRegistry()))

    async def until_entered() -> None:
        assert await asyncio.to_thread(entered.wait, 60)

    try:
        stuck.run_until_complete(until_entered())
        assert not stuck.is_running() and not stuck.is_closed()  # the claim is held

        async def other() -> float:
            began = time.monotonic()
            registry = CollectorRegistry()
            server = await _SharedAdmin.acquire(options, registry)
            took = time.monotonic() - began
            assert server is not None and server.port
            await _SharedAdmin.release(registry)
            return took

        took = asyncio.run(other())
        assert took < 20, f"waited {took:.1f} s on the claim of a stopped loop"
    finally:
        pending.cancel()
        stuck.run_until_complete(asyncio.gather(pending, return_exceptions=True))
        stuck.close()
