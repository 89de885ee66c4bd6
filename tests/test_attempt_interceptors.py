"""Attempt interceptors (``DialOptions.attempt_interceptors``, and the ones
``opentelemetry-instrument`` puts on every grpc.aio channel) and the cancel of an attempt.

grpc.aio runs a sub-channel's interceptors in a task of their own; an intercepted call
cancelled while that task still runs cancels only the task (``grpc/aio/_interceptor.py``,
``InterceptedCall.cancel``), not the RPC its continuation started. An interceptor that
awaits the attempt's status before handing the call back (per-attempt metrics, or
opentelemetry-instrumentation-grpc's aio interceptor, whose ``_wrap_unary_response`` awaits
``call.code()``) held the attempt's RPC past every cancel meshkit makes: a caller's cancel,
a hedge that lost, the channel's close. The server's handler ran to its end. Real servers
on loopback; each test fails on the code as found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.errors import MeshRpcError
from meshkit.resilience import RetryOptions, RetryPolicy

_SLOW = "meshkit.test.Slow"
_SLOW_S = 5.0  # a handler's sleep: a cancel that reaches it ends it well before


class _SlowService:
    """``Slow`` (unary-unary) and ``SlowStream`` (stream-unary: reads its requests first)
    sleep :data:`_SLOW_S` and record whether they were cancelled or completed; with
    ``first_only``, only the first call to arrive sleeps, later ones answer at once (the
    hedge that wins)."""

    def __init__(self, *, first_only: bool = False) -> None:
        self.first_only = first_only
        self.calls = 0
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.outcome: list[str] = []

    async def slow(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        if self.first_only and self.calls > 1:
            return b"fast"
        self.started.set()
        try:
            await asyncio.sleep(_SLOW_S)
        except asyncio.CancelledError:
            self.outcome.append("cancelled")
            self.ended.set()
            raise
        self.outcome.append("completed")
        self.ended.set()
        return b"slow"

    async def slow_stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for _ in requests:
            pass
        return await self.slow(b"", context)

    def add(self) -> tuple[Any, None]:
        handler = grpc.method_handlers_generic_handler(_SLOW, {
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "SlowStream": grpc.stream_unary_rpc_method_handler(self.slow_stream),
        })
        return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None

    async def handler_ended(self) -> list[str]:
        """The outcome of the slow handler, once it ended (a cancelled one at once; one
        nobody cancelled after :data:`_SLOW_S`)."""
        async with asyncio.timeout(_SLOW_S + 5):
            await self.ended.wait()
        return self.outcome


class _StatusLogger(grpc.aio.UnaryUnaryClientInterceptor,
                    grpc.aio.StreamUnaryClientInterceptor):
    """Per-attempt metrics by endpoint, as the README suggests attempt interceptors for:
    it waits for the attempt's status before handing the call back."""

    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []

    async def _log(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = await continuation(client_call_details, request)
        self.codes.append(await call.code())
        return call

    intercept_unary_unary = _log
    intercept_stream_unary = _log  # type: ignore[assignment]


@contextmanager
def _interceptor(kind: str) -> Iterator[dict[str, Any]]:
    """The ``DialOptions`` arguments of an attempt interceptor that awaits the status:
    the user's own (``"user"``), or none given and opentelemetry-instrumentation-grpc's
    aio client instrumentor patching ``grpc.aio.insecure_channel`` (what
    ``opentelemetry-instrument`` does; ``"opentelemetry-instrument"``)."""
    if kind == "user":
        yield {"attempt_interceptors": (_StatusLogger(),)}
        return
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

    instrumentor = GrpcAioInstrumentorClient()
    instrumentor.instrument()
    try:
        yield {}
    finally:
        instrumentor.uninstrument()


_KINDS = pytest.mark.parametrize("interceptor", ["user", "opentelemetry-instrument"])


async def _serve(registry: LocalRegistry, service: _SlowService,
                 *instance_ids: str) -> list[meshkit.MeshServer]:
    servers = []
    for instance_id in instance_ids:
        srv = meshkit.MeshServer("slowd", [service.add()], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=instance_id,
                                     drain_delay_s=0.0, grace_s=5.0, admin=None))
        await srv.start()
        servers.append(srv)
    return servers


@_KINDS
@pytest.mark.parametrize("method", ["Slow", "SlowStream"])
async def test_a_callers_cancel_reaches_the_server_through_an_attempt_interceptor(
        registry: LocalRegistry, interceptor: str, method: str) -> None:
    """A caller's cancel of a unary-response call (unary or client-streaming request)
    reaches the server's handler through an attempt interceptor that awaits the status,
    as it does without one: the RPC the interceptor's continuation started is cancelled
    with the interceptor's task."""
    service = _SlowService()
    servers = await _serve(registry, service, "s1")
    try:
        with _interceptor(interceptor) as kw:
            opts = meshkit.DialOptions(insecure=True, **kw)
            async with meshkit.dial("slowd", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1)

                async def call() -> Any:
                    if method == "Slow":
                        return await ch.unary_unary(f"/{_SLOW}/Slow")(b"", timeout=20.0)
                    return await ch.stream_unary(f"/{_SLOW}/SlowStream")(
                        iter([b"a", b"b"]), timeout=20.0)

                task = asyncio.create_task(call())
                async with asyncio.timeout(5):
                    await service.started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                outcome = await service.handler_ended()
        assert outcome == ["cancelled"], f"the server's handler was not cancelled: {outcome}"
    finally:
        for srv in servers:
            await srv.drain()


@_KINDS
async def test_a_losing_hedges_rpc_is_cancelled_through_an_attempt_interceptor(
        registry: LocalRegistry, interceptor: str) -> None:
    """Hedging: "the first success wins and the others are cancelled". The first attempt
    sleeps at its server, the hedge sent after ``hedge_delay_s`` answers at once; the
    first attempt's RPC is then cancelled at its server, also through an attempt
    interceptor that awaits the status."""
    service = _SlowService(first_only=True)
    servers = await _serve(registry, service, "h1", "h2")
    try:
        with _interceptor(interceptor) as kw:
            policy = RetryPolicy(idempotent=True, hedge_delay_s=0.2, max_attempts=2)
            opts = meshkit.DialOptions(insecure=True, retry=RetryOptions(default=policy),
                                       balancer=RoundRobin, outlier=None, **kw)
            async with meshkit.dial("slowd", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(2)
                async with asyncio.timeout(10):
                    reply = await ch.unary_unary(f"/{_SLOW}/Slow")(b"", timeout=20.0)
                assert reply == b"fast"
                assert ch.retry is not None and ch.retry.stats.hedges == 1
                outcome = await service.handler_ended()
        assert outcome == ["cancelled"], f"the losing hedge ran on: {outcome}"
    finally:
        for srv in servers:
            await srv.drain()


@_KINDS
async def test_closing_the_channel_cancels_an_attempt_held_by_an_attempt_interceptor(
        registry: LocalRegistry, interceptor: str) -> None:
    """``MeshChannel.close()`` cancels the calls still running ("then cancelling them"):
    also an attempt whose interceptor awaits its status. The caller gets ``CANCELLED``
    and the server's handler is cancelled."""
    service = _SlowService()
    servers = await _serve(registry, service, "s1")
    try:
        with _interceptor(interceptor) as kw:
            opts = meshkit.DialOptions(insecure=True, retry=None, **kw)
            ch = meshkit.dial("slowd", registry=registry, options=opts)
            try:
                await ch.wait_for_endpoints(1)
                call = ch.unary_unary(f"/{_SLOW}/Slow")(b"", timeout=20.0)

                async def run() -> Any:
                    return await call

                task = asyncio.create_task(run())
                async with asyncio.timeout(5):
                    await service.started.wait()
            finally:
                async with asyncio.timeout(10):
                    await ch.close()
            with pytest.raises((MeshRpcError, grpc.aio.AioRpcError)) as err:
                async with asyncio.timeout(5):
                    await task
            assert err.value.code() is grpc.StatusCode.CANCELLED
            outcome = await service.handler_ended()
        assert outcome == ["cancelled"], f"the server's handler was not cancelled: {outcome}"
    finally:
        for srv in servers:
            await srv.drain()


class _GivesUp(grpc.aio.UnaryUnaryClientInterceptor):
    """Waits for the attempt's status a short while, then gives up with its own error."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        call = await continuation(client_call_details, request)
        async with asyncio.timeout(0.3):
            await call.code()
        return call


async def test_an_attempt_interceptor_that_fails_while_its_rpc_runs_cancels_the_rpc(
        registry: LocalRegistry) -> None:
    """An attempt interceptor that raises while the RPC it started still runs (its own
    timeout here) fails the attempt with its error; nobody can read that RPC's answer
    any more, so it is cancelled at its server rather than left to run."""
    service = _SlowService()
    servers = await _serve(registry, service, "s1")
    try:
        opts = meshkit.DialOptions(insecure=True, retry=None,
                                   attempt_interceptors=(_GivesUp(),))
        async with meshkit.dial("slowd", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(10):
                    await ch.unary_unary(f"/{_SLOW}/Slow")(b"", timeout=20.0)
            outcome = await service.handler_ended()
        assert outcome == ["cancelled"], f"the server's handler was not cancelled: {outcome}"
    finally:
        for srv in servers:
            await srv.drain()
