"""A drain's refusal phase (:meth:`meshkit.MeshServer.drain`) ends once no mesh client's
call was refused for a while; a window in which the server's own event loop was held up
(a loaded box) proves no quiet, since calls wait in grpc core meanwhile and the stop that
follows ends them ``CANCELLED`` (grpc/grpc#41785), a status no client retries when its
call was sent before it saw any refusal."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.support.balancing import Prefer
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)


class _HoldTheLoop(grpc.aio.UnaryUnaryClientInterceptor):
    """Once ``armed`` attempts have started, hold the whole event loop for ``hold_s``
    (a starved process: the requests reach the server's grpc core, which its Python
    cannot take)."""

    def __init__(self, hold_s: float) -> None:
        self.armed = 0
        self.hold_s = hold_s

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        call = await continuation(client_call_details, request)
        if self.armed:
            self.armed -= 1
            if not self.armed:
                await asyncio.sleep(0)  # the attempt's batch goes to grpc core
                time.sleep(self.hold_s)  # noqa: ASYNC251 (no synchronisation: a starved loop)
        return call


async def test_a_refusal_window_with_the_loop_held_up_is_not_quiet(tmp_path: Path) -> None:
    """Calls a mesh client sent to a draining server as its refusal phase began, which
    waited in grpc core while the server's loop was held up through the phase's first
    quiet window, are refused (and retried elsewhere) before the stop, not ended
    ``CANCELLED`` by it."""
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                     poll_interval_s=0.05))
    # the client reads another registry, where e1 stays listed (a client cut off from
    # the registry the server deregisters from)
    creg = LocalRegistry(LocalOptions(path=tmp_path / "creg", ttl_s=30.0,
                                      poll_interval_s=0.05))
    servers = {}
    for iid in ("e1", "e2"):
        srv = meshkit.MeshServer(
            "echo", [add_echo(iid)], registry=reg,
            options=meshkit.ServeOptions(insecure=True, instance_id=iid, admin=None,
                                         drain_delay_s=0.0))
        await creg.register(await srv.start())
        servers[iid] = srv
    hold = _HoldTheLoop(0.3)
    opts = meshkit.DialOptions(insecure=True, retry=RetryOptions(), outlier=None,
                               balancer=lambda: Prefer("e1"),
                               attempt_interceptors=(hold,))
    e1 = servers.pop("e1")
    try:
        async with meshkit.dial("echo", registry=creg, options=opts) as ch:
            await asyncio.wait_for(ch.wait_for_endpoints(2), 10)
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"x", timeout=5) is not None
            table = e1._table
            assert table is not None
            calls: list[asyncio.Future[Any]] = []
            refuse = table.refuse

            def refuse_then_send(refusal: Any) -> None:
                refuse(refusal)  # the phase begins: three calls go to e1 at once
                hold.armed = 3
                calls.extend(asyncio.ensure_future(unary(b"x", timeout=5))
                             for _ in range(3))

            table.refuse = refuse_then_send  # type: ignore[method-assign]
            await asyncio.wait_for(e1.drain(), 15)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, bytes) for r in results), results
            assert e1.drain_refused == 3
    finally:
        await e1.drain()
        for srv in servers.values():
            await srv.drain()
        await creg.close()
        await reg.close()
