"""A unary call a per-call ``ClientInterceptor`` answered itself has not been cancelled,
whatever becomes of an attempt it started (a prefetch cancelled later, as when its task
is dropped): grpc.aio's call of an interceptor's own response says ``cancelled()`` false.
meshkit's asked the attempt it settled on (``details.last_call``): once that attempt was
cancelled, the call that had answered ``OK`` said ``cancelled()`` true (``code()``
still ``OK``). Real server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
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
async def test_a_call_an_interceptor_answered_is_not_cancelled_with_its_attempt(
        registry: LocalRegistry, inline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    prefetch = _Prefetch()
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, interceptors=[prefetch])) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_unary(method("Sleep"))(b"5000", timeout=10)
            assert await call == b"cached"
            attempt = call._details.last_call
            prefetch.started[-1].cancel()
            await until(attempt.done, what="the prefetch's attempt cancelled")
            assert attempt.cancelled()
            assert call.cancelled() is False
            assert call.done()
            assert await call.code() is grpc.StatusCode.OK
            assert call.cancelled() is False
