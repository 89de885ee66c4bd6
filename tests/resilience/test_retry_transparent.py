"""A call refused before any of it ran is sent once more, also where retries are off.

A meshkit server answers a call it sheds (``ServerLimits``: every call slot taken) or
refuses while it drains with a nack (``meshkit-nack: 1``): nothing of the call ran, and
the README promises that "mesh clients retry it elsewhere" (a drain's refusal "whatever
its idempotency"); the server refuses such calls *because* mesh clients move them on.
gRFC A6 ("Transparent Retries") retries such a call once, at once, whatever the method's
retry policy: "If the RPC reaches the gRPC server library, but has never been seen by the
server application logic [...], the client library will immediately retry it once."

What was wrong: a method whose policy turned retries off (``RetryOptions(methods={...:
None})``, ``default=None``, or ``RetryPolicy(max_attempts=1)``: the usual setting for a
write that must never run twice) ended with the refusal, ``RESOURCE_EXHAUSTED`` "server
busy", while another endpoint was idle: the one place where another attempt is safe for
any method.

Real MeshServers on loopback, a real MeshChannel; ``Prefer("a")`` sends each call's first
attempt to the server whose only call slot a plain grpc.aio call holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

import meshkit
from meshkit._metadata import PREVIOUS_ATTEMPTS
from meshkit.discovery import LocalRegistry
from meshkit.resilience import BudgetOptions, RetryOptions, RetryPolicy
from meshkit.server import ServerLimits
from tests.support.balancing import Prefer
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)


class _Seen(grpc.aio.UnaryUnaryClientInterceptor):
    """An attempt interceptor recording each attempt's previous-attempts header."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        value = dict(details.metadata or ()).get(PREVIOUS_ATTEMPTS)
        self.seen.append(None if value is None else str(value))
        return await continuation(details, request)


@contextlib.asynccontextmanager
async def busy(registry: LocalRegistry,
               ids: tuple[str, ...]) -> AsyncIterator[dict[str, list[str]]]:
    """Servers ``ids`` of service ``busy``, one call slot each; ``a``'s is held by a plain
    grpc.aio call throughout. Yields the methods each served, by instance id."""
    served: dict[str, list[str]] = {iid: [] for iid in ids}
    servers: dict[str, meshkit.MeshServer] = {}
    raw = None
    hold = None
    try:
        for iid in ids:
            srv = meshkit.MeshServer("busy", [add_echo(iid, served=served[iid])],
                                     registry=registry, options=meshkit.ServeOptions(
                                         insecure=True, instance_id=iid, drain_delay_s=0.0,
                                         grace_s=0.5, limits=ServerLimits(max_concurrent_rpcs=1)))
            await srv.start()
            servers[iid] = srv
        raw = grpc.aio.insecure_channel(f"127.0.0.1:{servers['a'].port}")
        hold = await asyncio.wait_for(_take_the_slot(raw), 10)
        for got in served.values():
            got.clear()
        yield served
    finally:
        if hold is not None:
            hold.cancel()
            await asyncio.gather(hold, return_exceptions=True)
        if raw is not None:
            await raw.close()
        for srv in servers.values():
            await srv.drain()


async def _take_the_slot(raw: grpc.aio.Channel) -> asyncio.Future[bytes]:
    """A long call holding ``a``'s only call slot, once a probe call of ``a`` is shed
    while it runs (a probe that came first took the slot and shed it: another try)."""
    sleep, probe = raw.unary_unary(method("Sleep")), raw.unary_unary(method("Unary"))
    while True:
        hold = asyncio.ensure_future(sleep(b"20000", timeout=30))
        await asyncio.sleep(0.05)
        if not hold.done():
            try:
                await probe(b"probe", timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and not hold.done():
                    return hold
        hold.cancel()
        await asyncio.gather(hold, return_exceptions=True)


@pytest.mark.parametrize("retry", [
    RetryOptions(methods={"Echo/Unary": None}),
    RetryOptions(default=None),
    RetryOptions(default=RetryPolicy(max_attempts=1)),
], ids=["method-none", "default-none", "one-attempt"])
async def test_a_shed_call_goes_once_more_where_retries_are_off(
        registry: LocalRegistry, retry: RetryOptions) -> None:
    seen = _Seen()
    options = meshkit.DialOptions(insecure=True, outlier=None, retry=retry,
                                  balancer=lambda: Prefer("a"), attempt_interceptors=(seen,))
    async with busy(registry, ("a", "b")) as served, \
            meshkit.dial("busy", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"b|x"
        assert ch.retry is not None and ch.retry.stats.retries == 1
        assert served == {"a": [], "b": ["Unary"]}  # ran once, where it was not refused
    assert seen.seen == [None, "1"]  # the second attempt says one went before it


async def test_once_only(registry: LocalRegistry) -> None:
    """Once (A6): refused again, the call ends with the second refusal."""
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=None))
    async with busy(registry, ("a",)) as served, \
            meshkit.dial("busy", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ch.retry is not None and ch.retry.stats.retries == 1
        assert ch.endpoints()[0].calls == 2
        assert served == {"a": []}


async def test_no_second_attempt_without_budget(registry: LocalRegistry) -> None:
    """The retry budget still bounds it: a spent budget leaves the refusal as it is."""
    options = meshkit.DialOptions(
        insecure=True, outlier=None, balancer=lambda: Prefer("a"),
        retry=RetryOptions(default=None, budget=BudgetOptions(retry_ratio=0.0,
                                                              min_retries_per_s=0.0)))
    async with busy(registry, ("a", "b")) as served, \
            meshkit.dial("busy", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ch.retry is not None and ch.retry.stats.budget_exhausted == 1
        assert served == {"a": [], "b": []}


async def test_an_application_error_is_not_sent_again(registry: LocalRegistry) -> None:
    """Only a refusal: a status the application answered ends the call as before."""
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=None),
                                  balancer=lambda: Prefer("b"))
    async with busy(registry, ("a", "b")) as served, \
            meshkit.dial("busy", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert ch.retry is not None and ch.retry.stats.retries == 0
        assert served == {"a": [], "b": ["Fail"]}
