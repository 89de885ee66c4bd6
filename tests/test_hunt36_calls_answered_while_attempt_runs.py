"""A unary call a per-call ``ClientInterceptor`` answered itself while an attempt it started
runs on (a prefetch: ``proceed`` in a task of its own, a cached answer returned) has
finished, as grpc.aio's call of an interceptor's own response: ``done()`` is true and
``cancel()`` returns ``False``. meshkit's asked the attempt it settled on
(``details.last_call``, still running): ``done()`` was false, and ``cancel()`` after the
``await`` had returned cancelled the task that awaited the call (the call had run inline
in it), which got a ``CancelledError`` at its next ``await`` in code that had nothing to do
with the call. Real server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor
from tests.support.echo import handler, method, raw_server
from tests.support.wait import until


class _Prefetch(ClientInterceptor):
    def __init__(self) -> None:
        self.started: list[asyncio.Future[Any]] = []

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        self.started.append(asyncio.ensure_future(proceed(details, request)))
        await until(lambda: details.last_call is not None, what="the attempt launched")
        return b"cached"


@pytest.mark.parametrize("inline", ["1", "0"])
async def test_a_call_answered_while_its_attempt_runs_is_done(
        registry: LocalRegistry, inline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    prefetch = _Prefetch()
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, interceptors=[prefetch])) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_unary(method("Sleep"))(b"300", timeout=5)
            assert await asyncio.wait_for(asyncio.shield(call), 5) == b"cached"
            # awaited inline in this task
            call = ch.unary_unary(method("Sleep"))(b"300", timeout=5)
            assert await call == b"cached"
            assert not prefetch.started[-1].done()  # the attempt runs on
            assert call.done()
            assert call.cancel() is False
            await asyncio.sleep(0.01)  # this task was not cancelled
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
            assert [await f for f in prefetch.started] == [b"e1", b"e1"]
