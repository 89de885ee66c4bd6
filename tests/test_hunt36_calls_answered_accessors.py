"""A unary call a per-call ``ClientInterceptor`` answered itself while an attempt it started
runs on (a prefetch: ``proceed`` in a task of its own, a cached answer returned) has
finished: grpc.aio's call of an interceptor's own response answers ``code()`` ``OK``,
``details()`` and its metadata at once and runs its done callbacks. meshkit's accessors
asked the attempt the call settled on (``details.last_call``): ``code()``, ``details()``,
``initial_metadata()`` and ``trailing_metadata()`` waited for that attempt's end (as long
as its deadline), and the done callbacks ran only then. A server holding the attempt
until the test ends, on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor
from tests.support.echo import SERVICE, raw_server
from tests.support.wait import until


class _Prefetch(ClientInterceptor):
    def __init__(self) -> None:
        self.started: list[asyncio.Future[Any]] = []

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        self.started.append(asyncio.ensure_future(proceed(details, request)))
        await until(lambda: details.last_call is not None, what="the attempt launched")
        return b"cached"


def _noting(ended: list[bool]) -> Any:
    return lambda call: ended.append(call.done())


@pytest.fixture
async def held(registry: LocalRegistry) -> AsyncIterator[tuple[Any, asyncio.Event]]:
    release = asyncio.Event()

    async def hold(request: bytes, context: Any) -> bytes:
        await release.wait()
        return b"fresh"

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Hold": grpc.unary_unary_rpc_method_handler(hold)})
    async with raw_server(handler) as (_server, port):
        await registry.register(
            Instance(service="held", instance_id="h1", host="127.0.0.1", port=port))
        try:
            yield registry, release
        finally:
            release.set()


@pytest.mark.parametrize("inline", ["1", "0"])
async def test_the_accessors_of_a_call_answered_while_its_attempt_runs(
        held: tuple[Any, asyncio.Event], inline: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry, release = held
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    prefetch = _Prefetch()
    async with meshkit.dial("held", registry=registry, options=meshkit.DialOptions(
            insecure=True, interceptors=[prefetch])) as ch:
        await ch.wait_for_endpoints(1)
        for before in (True, False):
            ended: list[bool] = []
            call = ch.unary_unary(f"/{SERVICE}/Hold")(b"", timeout=30)
            if before:
                call.add_done_callback(_noting(ended))
            assert await asyncio.wait_for(asyncio.shield(call), 10) == b"cached"
            if not before:
                call.add_done_callback(_noting(ended))
            # the attempt is held by the server; the call has finished all the same
            async with asyncio.timeout(10):
                assert await call.code() is grpc.StatusCode.OK
                assert await call.details() == ""
                assert tuple(await call.initial_metadata()) == ()
                assert tuple(await call.trailing_metadata()) == ()
                await call.wait_for_connection()
                await until(lambda e=ended: e == [True], what="the done callback ran")
            assert not prefetch.started[-1].done()
        release.set()
        assert [await f for f in prefetch.started] == [b"fresh", b"fresh"]
