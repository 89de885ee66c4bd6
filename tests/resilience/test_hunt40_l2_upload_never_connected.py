"""An upload (stream-unary) made with a one-shot request stream (a generator, an
iterator, the call's own ``write()``) whose attempt never connected (its endpoint's
server died between the pick's connectivity read and the attempt: ``UNAVAILABLE``
"failed to connect to all addresses", :class:`ConnectFailedError`) reached its caller
as that error, although nothing had left the client (about 1 in 1,900 uploads under
kill -9 churn): the retry interceptor retried such a call only when its request could be
iterated again. An attempt that never connects takes one message from the stream (grpc.aio
takes the first, then waits for the call's start to write it) and sends none, so the
messages it took are kept (up to a few) and given first to the next attempt, on another
endpoint (gRFC A6 transparent retry: nothing was sent). A stream whose attempt took more
than that, or whose take was cut in the middle, is not sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError

import meshkit
from meshkit.balancer import Done, Endpoint, EndpointState
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import RetryInterceptor, RetryOptions, RetryPolicy
from meshkit.resilience._retry import ConnectFailedError
from tests.support.echo import SERVICE, handler, method, raw_server

pytestmark = pytest.mark.timeout(90)

_REFUSED = (
    "failed to connect to all addresses; last error: UNAVAILABLE: "
    "ipv4:127.0.0.1:1: Connection refused"
)


class _PreferA:
    """Picks ``a`` while it reads READY, else ``b``."""

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._eps = tuple(endpoints)

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        for want in ("a", "b"):
            for ep in self._eps:
                if ep.key == want and ep.state is EndpointState.READY and ep not in exclude:
                    return ep, lambda code, latency_s: None
        return None


def _threaded_handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: b"a|" + r),
            "ClientStream": grpc.stream_unary_rpc_method_handler(
                lambda rs, c: b"a|" + b",".join(rs)
            ),
        },
    )


def _hold_until_not_ready(sub: grpc.aio.Channel) -> None:
    """Block the event loop (on purpose: the pool must not hear of it) until grpc's own
    view of sub-channel ``sub`` has left READY (its connection closed), for 5 s at most."""
    held = time.monotonic() + 5
    while sub.get_state() is grpc.ChannelConnectivity.READY and time.monotonic() < held:
        time.sleep(0.01)
    assert sub.get_state() is not grpc.ChannelConnectivity.READY


def _hold_get_state_ready(
    monkeypatch: pytest.MonkeyPatch, sub: grpc.aio.Channel, held: list[bool]
) -> None:
    """Make ``sub.get_state()`` read READY while ``held[0]`` is true (the pool's tracker
    reads it too), then grpc's own state."""
    real = sub.get_state

    def get_state(try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY if held[0] else real(try_to_connect)

    monkeypatch.setattr(sub, "get_state", get_state)


async def _agen(taken: list[bytes]) -> AsyncIterator[bytes]:
    for m in (b"x", b"y", b"z"):
        taken.append(m)
        yield m


def _gen(taken: list[bytes]) -> Iterator[bytes]:
    for m in (b"x", b"y", b"z"):
        taken.append(m)
        yield m


async def _upload(ch: meshkit.MeshChannel, style: str, taken: list[bytes]) -> Any:
    up = ch.stream_unary(method("ClientStream"))
    if style == "async-generator":
        return await up(_agen(taken), timeout=10)
    if style == "generator":
        return await up(_gen(taken), timeout=10)
    call = up(timeout=10)
    for m in (b"x", b"y", b"z"):
        taken.append(m)
        await call.write(m)
    await call.done_writing()
    return await call


@pytest.mark.parametrize("style", ["async-generator", "generator", "write"])
@pytest.mark.parametrize(
    "retry", [RetryOptions(), RetryOptions(default=None)], ids=["default-policy", "no-policy"]
)
async def test_an_upload_whose_attempt_never_connected_goes_to_another_endpoint(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, style: str, retry: RetryOptions
) -> None:
    """``a``'s server stops while the loop is held and the pick's read of its
    sub-channel still says READY (the read made a moment before the death: the race
    this reproduces), so the attempt goes to ``a`` and fails never connected: ``b``
    answers the whole stream (before: ``UNAVAILABLE`` "failed to connect...")."""
    server_a = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server_a.add_generic_rpc_handlers((_threaded_handlers(),))
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    server_a.start()
    try:
        async with raw_server(handler("b")) as (_, port_b):
            for key, port in (("a", port_a), ("b", port_b)):
                await registry.register(
                    Instance(service="echo", instance_id=key, host="127.0.0.1", port=port)
                )
            opts = meshkit.DialOptions(insecure=True, balancer=_PreferA, outlier=None, retry=retry)
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                assert await ch.unary_unary(method("Unary"))(b"w", timeout=5) == b"a|w"
                a = next(ep for ep in ch.endpoints() if ep.key == "a")
                server_a.stop(None).wait(5)
                sub = ch._conns["a"].channel
                _hold_until_not_ready(sub)
                assert a.state is EndpointState.READY
                # the pool's own tracking must not hear of the death before the pick
                # either (with write() the attempt starts a loop turn later, and uvloop
                # ran the tracker first: the call went to b at once, the case untested)
                _hold_get_state_ready(monkeypatch, sub, held := [True])
                real = ch._sub_channel_state
                reads: list[str] = []

                def stale(ep: Any) -> Any:
                    reads.append(ep.key)
                    held[0] = False
                    if ep is a and len(reads) == 1:  # the read made just before it died
                        return grpc.ChannelConnectivity.READY
                    return real(ep)

                monkeypatch.setattr(ch, "_sub_channel_state", stale)
                taken: list[bytes] = []
                assert await asyncio.wait_for(_upload(ch, style, taken), 20) == b"b|x,y,z"
                assert taken == [b"x", b"y", b"z"]  # each message taken once
                assert reads[0] == "a", reads  # the attempt went to a first (the race)
    finally:
        server_a.stop(None)


class _Proceed:
    """Fails the first ``fails`` attempts never connected after taking ``take`` messages
    from the request stream (sync or async); the next one sends the rest: answers what
    it took, joined."""

    def __init__(self, take: int, fails: int = 1) -> None:
        self.take = take
        self.fails = fails
        self.attempts = 0

    async def __call__(self, details: ClientCallDetails, request: Any) -> Any:
        self.attempts += 1
        got: list[bytes] = []
        if hasattr(request, "__aiter__"):
            it: Any = request.__aiter__()
            while self.attempts > self.fails or len(got) < self.take:
                try:
                    got.append(await it.__anext__())
                except StopAsyncIteration:
                    break
        else:
            sit = iter(request)
            while self.attempts > self.fails or len(got) < self.take:
                try:
                    got.append(next(sit))
                except StopIteration:
                    break
        if self.attempts <= self.fails:
            raise ConnectFailedError(_REFUSED)
        return b",".join(got)


def _details() -> ClientCallDetails:
    return ClientCallDetails(
        service="s", method="/p.S/Upload", kind=CallKind.STREAM_UNARY, timeout_s=5.0, metadata=None
    )


@pytest.mark.parametrize("source", ["iterator", "async-generator"])
@pytest.mark.parametrize("take", [0, 1, 2])
async def test_the_messages_a_never_connected_attempt_took_are_sent_by_the_next(
    source: str, take: int
) -> None:
    retry = RetryInterceptor(RetryOptions())
    taken: list[bytes] = []
    request = _agen(taken) if source == "async-generator" else _gen(taken)
    proceed = _Proceed(take)
    assert await retry.intercept_unary(_details(), request, proceed) == b"x,y,z"
    assert proceed.attempts == 2
    assert taken == [b"x", b"y", b"z"]


async def test_an_attempt_that_took_many_messages_is_not_sent_again() -> None:
    """More messages taken than an attempt that never connected takes: the stream is not
    kept (nor replayed), the error is the caller's."""
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(max_attempts=3)))
    many = iter([b"m%d" % i for i in range(40)])
    proceed = _Proceed(take=30)
    with pytest.raises(AioRpcError) as info:
        await retry.intercept_unary(_details(), many, proceed)
    assert isinstance(info.value, ConnectFailedError)
    assert proceed.attempts == 1
    assert retry.stats.retries == 0
