"""``ServeOptions.interceptors`` with an ``async aclose()`` (closed after the server
stops): one whose ``aclose()`` never returns (a connection pool closing against a
database or Redis that stopped answering) held ``drain()`` for ever: the server never
reported stopped (``wait_stopped()``, ``serve()`` after SIGTERM never returned, so the
pod waited out its grace period to be killed) and the steps after it (the other
interceptors' close, the handler threads, the admin server, an owned registry) never
ran. Each close is now bounded; past it the close is cancelled, logged, and the drain
goes on. Real server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
import meshkit.server as server_module
from meshkit.discovery import LocalRegistry

_SVC = "meshkit.test.Closing"


def _add() -> tuple[Any, None]:
    async def one(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "One": grpc.unary_unary_rpc_method_handler(one)})
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _Closing(grpc.aio.ServerInterceptor):
    def __init__(self, *, hangs: bool) -> None:
        self.hangs = hangs
        self.outcome: list[str] = []

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return await continuation(handler_call_details)

    async def aclose(self) -> None:
        if not self.hangs:
            self.outcome.append("closed")
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.outcome.append("cancelled")
            raise


async def test_an_interceptor_whose_aclose_hangs_does_not_hold_the_drain(
        registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(server_module, "_CLOSE_INTERCEPTOR_S", 0.3, raising=False)
    hangs, closes = _Closing(hangs=True), _Closing(hangs=False)
    srv = meshkit.MeshServer("closingd", [_add()], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="c1", drain_delay_s=0.0,
                                 grace_s=0.5, admin=None, interceptors=(hangs, closes)))
    await srv.start()
    drain = asyncio.create_task(srv.drain())
    try:
        async with asyncio.timeout(3):
            await srv.wait_stopped()
            await drain
    finally:
        if not drain.done():  # the old code: let the test end
            drain.cancel()
    assert hangs.outcome == ["cancelled"]
    assert closes.outcome == ["closed"]
    # (through the standard library, or straight out where an earlier test configured
    # structlog's own output)
    out = capsys.readouterr()
    assert "closing an interceptor failed" in caplog.text + out.out + out.err
