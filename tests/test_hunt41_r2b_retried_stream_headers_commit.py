"""A retried server stream (``RetryingStreamCall``) whose first attempt failed while its
grpc.aio call goes on -- an attempt interceptor (``DialOptions.attempt_interceptors``)
that hands grpc.aio a response iterator and raises a retryable status from it, as a
check of the first response may: grpc.aio's intercepted call then reports ``done()``
false -- is committed by an ``initial_metadata()`` asked during the retry's backoff to
that failed attempt's headers (``initial_metadata`` takes "not done" for "going on"),
and the commit task opens the next attempt anyway, after the pause.

1. The next attempt cannot open (its endpoint left meanwhile): the call is settled on no
   attempt and without an error, the state db9fc692 removed ``RetryingStreamCall._read``'s
   check of as unreachable. A ``read()`` after the commit task ended: before db9fc692 it
   raised ``UNAVAILABLE`` and ``code()`` said so; now it raises ``AttributeError``
   ('NoneType' object has no attribute 'read') and ``code()`` is ``OK``. A ``read()``
   asked in the backoff (before db9fc692 too) reads the refused attempt's spent
   iterator: ``EOF``, ``code()`` ``OK``, a failed stream reported complete.
2. The next attempt opens: the caller gets the first attempt's headers and the second
   attempt's messages, which ``initial_metadata()``'s docstring rules out (before these
   commits too).

Both were faults of meshkit/_calls.py: RetryingStreamCall._commit let the failed
attempt go only after its backoff; it now lets it go before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc.aio import Metadata

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.support.echo import raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


class _Top:
    """A backoff random source giving the cap: the pause is exactly ``base_delay_s``."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _RefuseFirst(grpc.aio.UnaryStreamClientInterceptor):
    """Refuses the first attempt's first response ``UNAVAILABLE`` from the response
    iterator it hands grpc.aio, its call going on (the server still streaming)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.refused = asyncio.Event()

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.attempts += 1
        call = await continuation(details, request)
        if self.attempts > 1:
            return call

        async def refusing() -> AsyncIterator[Any]:
            async for _ in call:
                self.refused.set()
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), details="stale replica"
                )
            yield b""  # (a generator: never reached)

        return refusing()


def _server(started: list[int]) -> grpc.GenericRpcHandler:
    async def numbered(request: bytes, context: Any) -> AsyncIterator[bytes]:
        started.append(n := len(started) + 1)
        await context.send_initial_metadata((("attempt", str(n)),))
        yield f"first of {n}".encode()
        await asyncio.sleep(30)  # the stream goes on (cancelled by the server's stop)
        yield b"never"

    return grpc.method_handlers_generic_handler(
        "t.S", {"Numbered": grpc.unary_stream_rpc_method_handler(numbered)}
    )


def _options(interceptor: _RefuseFirst, pause_s: float) -> meshkit.DialOptions:
    policy = RetryPolicy(
        idempotent=True,
        max_attempts=2,
        backoff=Backoff(base_delay_s=pause_s, max_delay_s=pause_s, rng=_Top()),
    )
    return meshkit.DialOptions(
        insecure=True, attempt_interceptors=(interceptor,), retry=RetryOptions(default=policy)
    )


@pytest.mark.parametrize(
    "read_after_the_backoff", [True, False], ids=["read-after-the-backoff", "read-in-the-backoff"]
)
async def test_a_stream_committed_in_backoff_whose_next_attempt_cannot_open_fails(
    registry: LocalRegistry, read_after_the_backoff: bool
) -> None:
    """The endpoint leaves during the backoff: read() raises a gRPC status
    (UNAVAILABLE) and code() says it, never AttributeError, nor EOF and OK."""
    started: list[int] = []
    refuse = _RefuseFirst()
    async with raw_server(_server(started)) as (_, port):
        only = Instance(service="s", instance_id="a", host="127.0.0.1", port=port)
        await registry.register(only)
        async with meshkit.dial(
            "s", registry=registry, options=_options(refuse, pause_s=4.0)
        ) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call = ch.unary_stream("/t.S/Numbered")(b"", timeout=30)
            await asyncio.wait_for(call.wait_for_connection(), 10)
            await asyncio.wait_for(refuse.refused.wait(), 10)
            # asked in the backoff (it answers at once now; a call that does not commit
            # to the refused attempt answers at its end: the next attempt cannot open)
            asked = asyncio.ensure_future(call.initial_metadata())
            await registry.deregister(only)
            await until(
                lambda: not ch.endpoints(),
                timeout_s=3.0,
                what="the channel without endpoints, in the 4 s backoff",
            )
            assert started == [1], "the retry came before the endpoint left"
            md = await asyncio.wait_for(asked, 20)
            if read_after_the_backoff:  # the commit task ended: the next attempt unopened
                await until(call.done, timeout_s=20.0, what="the backoff's end")
            try:
                got: Any = await asyncio.wait_for(call.read(), 15)
            except grpc.aio.AioRpcError as exc:
                got = exc.code()
            except Exception as exc:  # what the caller gets, named
                got = f"{type(exc).__name__}: {exc}"
            code = await asyncio.wait_for(call.code(), 10)
            assert (got, code) == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE), (
                tuple(md),
                got,
                code,
            )


async def test_a_retried_streams_headers_and_first_message_are_one_attempts(
    registry: LocalRegistry,
) -> None:
    """initial_metadata() asked in the backoff after a refused first attempt: the
    headers it returns and the first message read are the same attempt's."""
    started: list[int] = []
    refuse = _RefuseFirst()
    async with raw_server(_server(started)) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1", port=port))
        async with meshkit.dial(
            "s", registry=registry, options=_options(refuse, pause_s=0.5)
        ) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            call = ch.unary_stream("/t.S/Numbered")(b"", timeout=30)
            await asyncio.wait_for(call.wait_for_connection(), 10)
            await asyncio.wait_for(refuse.refused.wait(), 10)
            md = dict(await asyncio.wait_for(call.initial_metadata(), 10))
            first = await asyncio.wait_for(call.read(), 10)
            call.cancel()
            assert first == f"first of {md['attempt']}".encode(), (md, first, started)
