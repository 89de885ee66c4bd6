"""The endpoint pool's life cycle through a real channel (meshkit/_pool.py): closing it
with calls waiting or in flight, the drain of endpoints that left, and what the wait for
discovery and a spent deadline answer. Real grpc.aio servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

import meshkit
import meshkit.channel
from meshkit.balancer import P2C, EndpointState, OutlierOptions, RingHash, RoundRobin
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.echo import SERVICE, handler, method, raw_server
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until


def inst(instance_id: str, port: int) -> Instance:
    return Instance(service="echo", instance_id=instance_id, host="127.0.0.1", port=port)


async def served_by(unary: Any, n: int) -> set[bytes]:
    """Which instances answered ``n`` sequential Unary calls."""
    return {(await unary(b"x", timeout=2)).split(b"|")[0] for _ in range(n)}


@contextlib.asynccontextmanager
async def one_endpoint(registry: LocalRegistry,
                       drain_timeout_s: float) -> AsyncIterator[tuple[Any, Instance]]:
    """A channel (no retries, ``drain_timeout_s``) that has found its one endpoint, a raw
    echo server registered as ``e1``, and that instance (for the test to deregister)."""
    async with raw_server(handler("e1")) as (_, port):
        i1 = inst("e1", port)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=None, drain_timeout_s=drain_timeout_s)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            yield ch, i1


class SilentRegistry:
    """A registry whose watch never answers (a slow or partitioned discovery backend)."""

    async def register(self, instance: Instance) -> None:
        pass

    async def deregister(self, instance: Instance) -> None:
        pass

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        await asyncio.sleep(3600)
        yield frozenset()

    async def close(self) -> None:
        pass


async def test_close_ends_a_wait_for_ready_call_waiting_for_an_endpoint(
    registry: LocalRegistry,
) -> None:
    """A call waiting (wait_for_ready) for an endpoint when the channel is closed ends at
    once with CANCELLED ("channel ... is closed", as a call made after close), instead of
    waiting on for its deadline (or forever without one)."""
    ch = meshkit.dial("nobody", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=None))
    unary = ch.unary_unary(method("Unary"))
    call = asyncio.ensure_future(unary(b"x", timeout=4, wait_for_ready=True))
    await asyncio.sleep(0.3)
    assert not call.done()
    try:
        await ch.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, 1.5)
        assert info.value.code() is grpc.StatusCode.CANCELLED
    finally:
        call.cancel()
        await asyncio.wait({call}, timeout=5)


async def test_close_cancels_a_unary_call_in_flight(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """close() (grace None) cancels the calls in flight, as grpc.aio's Channel.close does
    and MeshChannel.close's docstring says ("letting calls finish for grace s"): a unary
    call in flight must not go on running to its end after the channel is closed."""
    await echo_servers("e1")
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=None))
    await ch.wait_for_endpoints(1)
    sleep = ch.unary_unary(method("Sleep"))
    call = asyncio.ensure_future(sleep(b"3000", timeout=10))
    await until(lambda: any(e.in_flight for e in ch.endpoints()), what="call in flight")
    try:
        await ch.close()
        done, _ = await asyncio.wait({call}, timeout=1.5)
        assert done, "the call was still running 1.5 s after close()"
        with contextlib.suppress(BaseException):
            call.result()
        assert call.cancelled() or (call.exception() is not None and getattr(
            call.exception(), "code", lambda: None)() is grpc.StatusCode.CANCELLED)
    finally:  # leave no call running past the test's event loop
        call.cancel()
        await asyncio.wait({call}, timeout=5)


async def test_close_closes_the_sub_channel_of_an_endpoint_that_left(
    registry: LocalRegistry,
) -> None:
    """An endpoint that left the registry keeps its sub-channel open for drain_timeout_s;
    closing the channel meanwhile must close that sub-channel too (its calls cancelled):
    close() cancels the task closing it with grace, so the retired sub-channel is never
    closed and its stream goes on working after the channel is closed."""
    async with raw_server(handler("e1")) as (_, port):
        i1 = inst("e1", port)
        await registry.register(i1)
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True, retry=None,
                                                      drain_timeout_s=30))
        await ch.wait_for_endpoints(1)
        bidi = ch.stream_stream(method("Bidi"))(timeout=20)
        await bidi.write(b"a")
        assert await asyncio.wait_for(bidi.read(), 3) == b"e1|a"
        await registry.deregister(i1)
        await until(lambda: not ch.endpoints(), what="endpoint removed")
        try:
            await asyncio.wait_for(ch.close(), 3)
            # the stream on the retired sub-channel must be ended by close()
            try:
                await asyncio.wait_for(bidi.write(b"b"), 2)
                got = await asyncio.wait_for(bidi.read(), 2)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError):
                got = None
            assert got is None or got is grpc.aio.EOF, \
                f"stream still works after close(): {got!r}"
        finally:  # leave no call running past the test's event loop
            bidi.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(bidi.code(), 3)


async def test_deadline_gone_before_the_attempt_is_no_failure_of_the_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A call whose deadline has passed before its attempt starts fails DEADLINE_EXCEEDED
    without reaching any server (README: "deadline passed before an attempt could start");
    that must not count as the endpoint's failure. Today every such call is reported as a
    DEADLINE_EXCEEDED outcome of the picked endpoint, so a burst of callers with spent
    (e.g. propagated) deadlines ejects a healthy endpoint."""
    await echo_servers("e1")
    await echo_servers("e2")
    opts = meshkit.DialOptions(insecure=True, retry=None, balancer=RoundRobin,
                               outlier=OutlierOptions(consecutive_failures=3))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(8):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"x", timeout=1e-9)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert [e.instance_id for e in ch.stats().endpoints if e.ejected] == []
        assert await served_by(unary, 6) == {b"e1", b"e2"}


async def test_a_binary_hash_key_does_not_break_the_call(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """``hash_key_metadata`` may name any metadata key; a ``-bin`` key carries bytes that
    need not be UTF-8 (that is what -bin keys are for). Such a call raises
    UnicodeDecodeError from the stub instead of being hashed and sent."""
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, balancer=RingHash, hash_key_metadata="user-bin")
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        try:
            got = await unary(b"x", timeout=2, metadata=(("user-bin", b"\xff\x00\xfe"),))
        except UnicodeDecodeError as exc:  # (reported plainly: pytest's traceback of it
            got = repr(exc)                 # crashes on this Python)
        assert got == b"e1|x"


async def test_a_deadline_that_ends_the_wait_for_discovery_is_deadline_exceeded() -> None:
    """A call waits for the first discovery answer for resolve_timeout_s (5 s) "bounded by
    the call's deadline". When the deadline is what ended the wait, the call failed by its
    deadline: DEADLINE_EXCEEDED (as gRPC fails a call queued on name resolution, and as
    this channel does for a wait_for_ready wait), not UNAVAILABLE "no discovery answer
    within 0.3s"."""
    ch = meshkit.dial("echo", registry=SilentRegistry(),  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, retry=None))
    try:
        unary = ch.unary_unary(method("Unary"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(unary(b"x", timeout=0.3), 3)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
    finally:
        await ch.close()


class LateRegistry:
    """A registry whose watches give their first answer only once :attr:`opened` is set (a
    registry not reachable yet while the client starts, e.g. etcd still electing)."""

    def __init__(self, inner: LocalRegistry) -> None:
        self.inner = inner
        self.opened = asyncio.Event()

    async def register(self, instance: Instance) -> None:
        await self.inner.register(instance)

    async def deregister(self, instance: Instance) -> None:
        await self.inner.deregister(instance)

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        await self.opened.wait()
        async for instances in self.inner.watch(service):
            yield instances

    async def close(self) -> None:
        pass


async def test_wait_for_ready_waits_through_a_late_first_discovery_answer(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """``wait_for_ready=True`` makes a call wait for an endpoint instead of failing
    UNAVAILABLE (gRPC queues wait-for-ready calls through resolver delays and failures
    until their deadline). While the registry had not answered yet, such a call failed
    UNAVAILABLE "no discovery answer within 0.3s" (``resolve_timeout_s``; after three such
    waits with the default retries), long before its deadline, although the registry
    answered with a live endpoint well within it."""
    await echo_servers("e1")
    late = LateRegistry(registry)
    async with meshkit.dial("echo", registry=late,  # type: ignore[arg-type]
                            options=meshkit.DialOptions(insecure=True,
                                                        resolve_timeout_s=0.3)) as ch:
        asyncio.get_running_loop().call_later(1.5, late.opened.set)
        async with asyncio.timeout(10):
            reply = await ch.unary_unary(method("Unary"))(b"x", timeout=6.0,
                                                          wait_for_ready=True)
    assert reply == b"e1|x"


async def test_wait_for_ready_without_a_discovery_answer_fails_at_its_deadline() -> None:
    """A wait_for_ready call whose deadline passes before the first discovery answer
    fails DEADLINE_EXCEEDED at its deadline, once (the default retries do not wait
    again), not UNAVAILABLE after ``resolve_timeout_s``."""
    ch = meshkit.dial("echo", registry=SilentRegistry(),  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, resolve_timeout_s=0.3))
    try:
        unary = ch.unary_unary(method("Unary"))
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(unary(b"x", timeout=1.5, wait_for_ready=True), 10)
        took = time.monotonic() - started
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
        assert "discovery" in (info.value.details() or "")
        assert 1.4 < took < 4.0, took
    finally:
        await ch.close()


async def test_wait_for_ready_without_a_deadline_waits_for_discovery_until_closed() -> None:
    """Without a deadline a wait_for_ready call waits for the first discovery answer
    however long (well past ``resolve_timeout_s``); closing the channel ends it
    CANCELLED. A call without wait_for_ready still fails UNAVAILABLE "no discovery
    answer" after ``resolve_timeout_s``."""
    ch = meshkit.dial("echo", registry=SilentRegistry(),  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, retry=None,
                                                  resolve_timeout_s=0.2))
    unary = ch.unary_unary(method("Unary"))
    call = asyncio.ensure_future(unary(b"x", wait_for_ready=True))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(unary(b"x"), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert "no discovery answer within 0.2s" in (info.value.details() or "")
        await asyncio.sleep(1.0)  # five times resolve_timeout_s
        assert not call.done(), call
        await ch.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, 5)
        assert info.value.code() is grpc.StatusCode.CANCELLED, info.value.details()
    finally:
        call.cancel()
        await asyncio.wait({call}, timeout=5)
        await ch.close()


async def test_no_discovery_answer_is_not_retried() -> None:
    """A call made before the registry's first answer waits ``resolve_timeout_s`` for it
    and then fails UNAVAILABLE "no discovery answer" (``DialOptions.resolve_timeout_s``).
    The default retry policy retried that failure, so each retry waited again: three
    times the documented wait (15 s at the default 5 s). The wait is the call's
    retry; the failure is not retried, and the channel's retry stats count no retry.
    The default policy and a hedging one, each on its own channel, side by side (each
    call only waits for its registry)."""
    async def default_policy() -> None:
        ch = meshkit.dial("echo", registry=SilentRegistry(),  # type: ignore[arg-type]
                          options=meshkit.DialOptions(insecure=True, resolve_timeout_s=1.0))
        try:
            unary = ch.unary_unary(method("Unary"))
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(unary(b"x", timeout=20), 15)
            took = time.monotonic() - started
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert "no discovery answer within 1s" in (info.value.details() or "")
            assert took < 1.9, took  # one wait of 1 s, not three
        finally:
            await ch.close()

    async def hedged_policy() -> None:
        hedged = meshkit.DialOptions(insecure=True, resolve_timeout_s=1.0,
                                     retry=RetryOptions(default=RetryPolicy(
                                         idempotent=True, hedge_delay_s=0.05)))
        ch = meshkit.dial("echo", registry=SilentRegistry(),  # type: ignore[arg-type]
                          options=hedged)
        try:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(ch.unary_unary(method("Unary"))(b"x", timeout=20), 15)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert time.monotonic() - started < 1.9  # hedged: no hedge waits again
        finally:
            await ch.close()

    await asyncio.gather(default_policy(), hedged_policy())


async def test_a_unary_call_on_an_endpoint_that_left_finishes_within_the_drain(
    registry: LocalRegistry,
) -> None:
    """An endpoint that leaves the registry gets no new call, and a unary call in flight
    on it (run in the caller's task, which grpc.aio's channel does not track) finishes
    with its answer within ``drain_timeout_s``."""
    async with one_endpoint(registry, drain_timeout_s=5) as (ch, i1):
        call = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"600", timeout=5))
        await until(lambda: any(e.in_flight for e in ch.endpoints()), what="in flight")
        await registry.deregister(i1)
        await until(lambda: not ch.endpoints(), what="endpoint removed")
        assert await asyncio.wait_for(call, 4) == b"e1"


async def test_a_call_that_outlasts_the_drain_is_cancelled(registry: LocalRegistry) -> None:
    """What still runs on an endpoint that left when ``drain_timeout_s`` is up is
    cut (``UNAVAILABLE``, the connection taken away: test_hunt36b_channel_drain_cut_status),
    not left running on a sub-channel nobody closes."""
    async with one_endpoint(registry, drain_timeout_s=0.3) as (ch, i1):
        call = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"5000", timeout=8))
        await until(lambda: any(e.in_flight for e in ch.endpoints()), what="in flight")
        await registry.deregister(i1)
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, 4)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 3


async def test_close_with_grace_lets_a_call_in_flight_finish(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """``close(grace)`` lets the calls in flight end within ``grace`` seconds."""
    await echo_servers("e1")
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=None))
    await ch.wait_for_endpoints(1)
    call = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"300", timeout=5))
    await until(lambda: any(e.in_flight for e in ch.endpoints()), what="call in flight")
    await asyncio.wait_for(ch.close(grace=3), 5)
    assert call.done() and call.result() == b"e1"


async def test_a_long_stream_is_no_latency_sample_of_its_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """P2C's load is a peak EWMA of round-trip times (Finagle, Linkerd). A stream's
    lifetime is none: one quiet, healthy 1.5 s stream used to set its endpoint's estimate
    to 1.5 s, and P2C then sent that endpoint no call for many seconds."""
    await echo_servers("e1")
    await echo_servers("e2")
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(10):
            await unary(b"x", timeout=2)
        bidi = ch.stream_stream(method("Bidi"))(timeout=10)
        await bidi.write(b"a")
        held_on = (await asyncio.wait_for(bidi.read(), 3)).split(b"|")[0].decode()
        # a quiet, healthy stream of 1 s: as a sample, >= 1000 ms (P2C's peak EWMA jumps
        # to it), twice the bound below
        await asyncio.sleep(1.0)
        await bidi.done_writing()
        assert await bidi.code() is grpc.StatusCode.OK
        await until(lambda: all(e.pending == 0 for e in ch.stats().endpoints),
                    what="the stream's outcome reported")
        rtt = {e.instance_id: e.rtt_ms for e in ch.stats().endpoints}
        assert rtt[held_on] is not None and rtt[held_on] < 500, rtt


def toggled_handler(tag: str, broken: list[bool]) -> grpc.GenericRpcHandler:
    """The echo Unary method, failing UNAVAILABLE while ``broken[0]``."""
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if broken[0]:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "broken")
        return tag.encode() + b"|" + request

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)})


async def test_wait_for_ready_call_gets_the_endpoint_back_when_its_ejection_ends(
    registry: LocalRegistry,
) -> None:
    """With every endpoint ejected, a wait_for_ready call waits for one (pick_slow); when
    the ejection time is up the endpoint is back for its probe, but nothing wakes the
    waiting call (only discovery and connectivity changes do), so it fails
    DEADLINE_EXCEEDED although the endpoint had been available for most of its wait."""
    broken = [True]
    async with raw_server(toggled_handler("e1", broken)) as (_, port):
        await registry.register(inst("e1", port))
        opts = meshkit.DialOptions(
            insecure=True, retry=None,
            outlier=OutlierOptions(consecutive_failures=2, base_ejection_s=0.3))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            unary = ch.unary_unary(method("Unary"))
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError):
                    await unary(b"x", timeout=2)
            assert [e.instance_id for e in ch.stats().endpoints if e.ejected] == ["e1"]
            broken[0] = False
            got = await asyncio.wait_for(unary(b"x", timeout=3, wait_for_ready=True), 5)
            assert got == b"e1|x"


async def test_a_channel_whose_endpoints_are_all_ejected_reports_what_panic_routing_uses(
    registry: LocalRegistry,
) -> None:
    """With its only endpoint ejected, calls still go to it (panic routing: ejection never
    empties a service) and fail with its own answer, not "ejected"; the channel's state is
    that endpoint's connection (READY), as it takes the calls, and the endpoint is back in
    rotation once a probe succeeds. (Before panic routing such calls failed fast and the
    state said TRANSIENT_FAILURE.)"""
    broken = [True]
    async with raw_server(toggled_handler("e1", broken)) as (_, port):
        await registry.register(inst("e1", port))
        opts = meshkit.DialOptions(
            insecure=True, retry=None,
            outlier=OutlierOptions(consecutive_failures=2, base_ejection_s=0.3))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            assert ch.get_state() is grpc.ChannelConnectivity.READY
            unary = ch.unary_unary(method("Unary"))
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError):
                    await unary(b"x", timeout=2)
            assert [e.ejected for e in ch.stats().endpoints] == [True]
            assert ch.get_state() is grpc.ChannelConnectivity.READY
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"x", timeout=2)
            assert info.value.details() == "broken", info.value.details()
            assert ch.stats().panic_picks >= 1
            broken[0] = False
            await asyncio.sleep(0.35)
            assert await unary(b"x", timeout=2) == b"e1|x"  # the probe
            assert [e.ejected for e in ch.stats().endpoints] == [False]
            assert ch.get_state() is grpc.ChannelConnectivity.READY


async def test_wait_for_endpoints_ends_when_the_channel_closes(
    registry: LocalRegistry,
) -> None:
    """``wait_for_endpoints`` on a channel closed meanwhile fails ``CANCELLED`` at once
    instead of running to its timeout."""
    ch = meshkit.dial("nobody", registry=registry, options=meshkit.DialOptions(insecure=True))
    waiting = asyncio.ensure_future(ch.wait_for_endpoints(1, timeout_s=10))
    await asyncio.sleep(0.1)
    await ch.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(waiting, 2)
    assert info.value.code() is grpc.StatusCode.CANCELLED


async def test_streams_ended_by_their_deadline_do_not_eject_the_endpoint(
    registry: LocalRegistry,
) -> None:
    """A server stream bounded by its deadline (a watch renewed every n seconds) ends
    DEADLINE_EXCEEDED by design: that is no failure of the endpoint, or a service used
    only through such streams would have its endpoints ejected."""
    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        yield b"snapshot"
        await asyncio.sleep(30)

    watcher = grpc.method_handlers_generic_handler(
        "meshkit.test.Watch", {"Watch": grpc.unary_stream_rpc_method_handler(watch)})
    async with raw_server(watcher) as (_, port):
        await registry.register(inst("e1", port))
        opts = meshkit.DialOptions(insecure=True, retry=None,
                                   outlier=OutlierOptions(consecutive_failures=2))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            for _ in range(4):
                stream = ch.unary_stream("/meshkit.test.Watch/Watch")(b"", timeout=0.2)
                assert await stream.read() == b"snapshot"
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stream.read()
                assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await until(lambda: all(e.pending == 0 for e in ch.stats().endpoints),
                        what="the streams' outcomes reported")
            assert [e.instance_id for e in ch.stats().endpoints if e.ejected] == []


async def test_a_cancelled_close_still_closes_the_channel(
    registry: LocalRegistry, registry_dir: Path, echo_servers: EchoFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``close(grace)`` cut short by its caller (``wait_for``) goes on to its end: the call
    in flight is cancelled after the grace, the sub-channels closed and the registry the
    channel made itself closed; a second ``close()`` waits for that instead of returning
    at once with the work half done."""
    await echo_servers("e1")
    monkeypatch.setenv("MESHKIT_REGISTRY", f"local://{registry_dir}?poll_interval_s=0.05")
    ch = meshkit.dial("echo", options=meshkit.DialOptions(insecure=True, retry=None))
    await ch.wait_for_endpoints(1)
    call = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"5000", timeout=10))
    await until(lambda: any(e.in_flight for e in ch.endpoints()), what="call in flight")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ch.close(grace=0.5), 0.1)
    await asyncio.wait_for(ch.close(), 3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call, 2)
    assert info.value.code() is grpc.StatusCode.CANCELLED
    assert not ch._pool._tasks and not ch._pool._draining
    assert ch.registry._closed  # type: ignore[attr-defined]



async def ended_cancelled_by_the_mesh(task: asyncio.Future[Any], what: str,
                                      timeout_s: float = 2.0,
                                      code: grpc.StatusCode = grpc.StatusCode.CANCELLED) -> Any:
    """Wait (``timeout_s`` at most) for ``task``, a reader or writer of a stream the mesh
    cancelled, and check that it ended with ``MeshRpcError`` ``code`` (``CANCELLED``: the
    channel closed; ``UNAVAILABLE``: its endpoint left and ``drain_timeout_s`` ran out),
    not ``CancelledError``; the error."""
    from meshkit.errors import MeshRpcError

    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    assert done, f"the {what} was still waiting {timeout_s} s after its stream was cancelled"
    assert not task.cancelled(), f"the {what} ended in CancelledError"
    err = task.exception()
    assert isinstance(err, MeshRpcError), repr(err)
    assert err.code() is code, repr(err)
    return err


async def _requests_then_quiet() -> AsyncIterator[bytes]:
    """One request, then a request stream that stays open and quiet."""
    yield b"a"
    await asyncio.sleep(30)


async def _bidi_iterated(ch: Any, got: list[Any]) -> Any:
    """A bidi stream read with ``async for``, its first answer in: ``(call, reader)``."""
    call = ch.stream_stream(method("Bidi"))(_requests_then_quiet(), timeout=10)

    async def read_all() -> None:
        async for m in call:
            got.append(m)

    reader = asyncio.ensure_future(read_all())
    await until(lambda: bool(got), what="the first answer")
    return call, reader


async def _bidi_read(ch: Any, got: list[Any]) -> Any:
    """A bidi stream used with ``write``/``read``, its first answer in; the reader task
    blocked in ``read()``."""
    call = ch.stream_stream(method("Bidi"))(timeout=10)
    await call.write(b"a")
    got.append(await call.read())
    return call, asyncio.ensure_future(call.read())


async def _long_server_stream(ch: Any, got: list[Any], *, iterate: bool) -> Any:
    """A server stream of ten million answers (a retried one: its policy is idempotent)
    read by a task, its first answer in."""
    call = ch.unary_stream(method("ServerStream"))(b"10000000", timeout=10)

    async def read_all() -> None:
        if iterate:
            async for m in call:
                got.append(m)
        else:
            while (m := await call.read()) is not grpc.aio.EOF:
                got.append(m)

    reader = asyncio.ensure_future(read_all())
    await until(lambda: bool(got), what="the first answer")
    return call, reader


async def _retried_iterated(ch: Any, got: list[Any]) -> Any:
    return await _long_server_stream(ch, got, iterate=True)


async def _retried_read(ch: Any, got: list[Any]) -> Any:
    return await _long_server_stream(ch, got, iterate=False)


@pytest.mark.parametrize("open_", [_bidi_iterated, _bidi_read, _retried_iterated,
                                   _retried_read])
async def test_close_ends_a_stream_reader_with_cancelled_not_cancelled_error(
    registry: LocalRegistry, echo_servers: EchoFactory, open_: Any,
) -> None:
    """A stream the channel's ``close()`` cancels ends its reader with ``MeshRpcError``
    ``CANCELLED``, as a unary call in flight does; grpc.aio raises
    ``asyncio.CancelledError`` from the read, in a task nobody cancelled: a ``TaskGroup``
    or a supervisor then takes the reader for cancelled and says nothing. (A stream its
    caller cancels still raises ``CancelledError``, grpc.aio's rule:
    tests/test_stream_codecs.py, tests/resilience/test_retry_stream.py.)"""
    from meshkit.resilience import RetryOptions, RetryPolicy

    await echo_servers("e1")
    retry = RetryOptions(default=RetryPolicy(idempotent=True))
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=retry))
    await ch.wait_for_endpoints(1)
    got: list[Any] = []
    call, reader = await open_(ch, got)
    assert got[0].startswith(b"e1|")
    await asyncio.sleep(0.1)
    assert not reader.done()
    try:
        await ch.close()
        err = await ended_cancelled_by_the_mesh(reader, "reader")
        assert "closed" in (err.details() or "")
        assert await call.code() is grpc.StatusCode.CANCELLED
    finally:
        reader.cancel()
        await asyncio.wait({reader}, timeout=5)


async def test_a_stream_that_outlasts_the_drain_ends_its_reader_with_unavailable(
    registry: LocalRegistry,
) -> None:
    """A stream still open on an endpoint that left when ``drain_timeout_s`` is up is
    cut, and its reader gets ``MeshRpcError`` ``UNAVAILABLE`` (as a unary call so cut:
    test_hunt37_a1_stream_drain_cut; not a ``CancelledError`` in a task nobody
    cancelled)."""

    async with one_endpoint(registry, drain_timeout_s=0.3) as (ch, i1):
        got: list[Any] = []
        _, reader = await _bidi_read(ch, got)
        await registry.deregister(i1)
        await ended_cancelled_by_the_mesh(reader, "reader", timeout_s=4.0,
                                          code=grpc.StatusCode.UNAVAILABLE)


async def test_close_ends_a_blocked_stream_writer_with_cancelled(
    registry: LocalRegistry,
) -> None:
    """A writer blocked in ``write()`` (the server reads nothing, flow control is shut)
    when the channel closes gets ``MeshRpcError`` ``CANCELLED``, as a reader does."""

    async def stall(requests: Any, context: Any) -> AsyncIterator[bytes]:
        await asyncio.sleep(30)
        yield b""

    stalling = grpc.method_handlers_generic_handler(
        SERVICE, {"Stall": grpc.stream_stream_rpc_method_handler(stall)})
    async with raw_server(stalling) as (_, port):
        await registry.register(inst("s1", port))
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True, retry=None))
        await ch.wait_for_endpoints(1)
        call = ch.stream_stream(method("Stall"))(timeout=10)
        sent = 0

        async def write_until_blocked() -> None:
            nonlocal sent
            while True:
                await call.write(b"x" * 65536)
                sent += 1

        writer = asyncio.ensure_future(write_until_blocked())
        try:
            last = -1
            while last != sent:  # flow control shut: no write returns for 0.3 s
                last = sent
                await asyncio.sleep(0.3)
            assert not writer.done(), writer
            await ch.close()
            await ended_cancelled_by_the_mesh(writer, "writer")
        finally:
            writer.cancel()
            await asyncio.wait({writer}, timeout=5)
            await ch.close()


class _StartAtFirst:
    """An rng for RoundRobin whose turn starts at the first endpoint (sorted by id)."""

    def randrange(self, n: int) -> int:
        return 0


async def _first_calls(registry: LocalRegistry, n: int, **call_kw: Any) -> list[Any]:
    """``n`` fresh channels at once, one Unary call each (round robin's first turn on the
    refusing ``a-dead``): the answers, or the errors with the channel's state."""
    opts = meshkit.DialOptions(insecure=True,
                               balancer=lambda: RoundRobin(rng=_StartAtFirst()))  # type: ignore[arg-type]

    async def one() -> Any:
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            try:
                return await ch.unary_unary(method("Unary"))(b"x", **call_kw)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, exc.details(), ch.get_state().name

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 9)


@pytest.mark.parametrize("wait_for_ready", [False, True])
async def test_a_first_call_waits_for_a_connected_endpoint_not_the_one_still_connecting(
    registry: LocalRegistry, echo_servers: EchoFactory, wait_for_ready: bool,
) -> None:
    """On a fresh channel no endpoint is READY yet; a call is not committed to the one the
    balancer picked while it connects (as gRPC's round_robin queues it): one that refuses
    connections (port 1) would fail it with grpc's "failed to connect to all addresses"
    although ``b-good`` is healthy, or (``wait_for_ready``) hold it to its deadline."""
    await echo_servers("b-good")
    await registry.register(inst("a-dead", 1))  # nothing listens on port 1
    results = await _first_calls(registry, 3, timeout=3, wait_for_ready=wait_for_ready)
    assert results == [b"b-good|x"] * 3


async def test_with_every_endpoint_refusing_a_first_call_fails_naming_the_service(
    registry: LocalRegistry,
) -> None:
    """Every endpoint refusing connections: a call fails ``UNAVAILABLE`` naming the
    service (the README's balanced-channel table), within its deadline, not with grpc's
    message naming an address; with ``wait_for_ready`` it waits out its deadline."""
    await registry.register(inst("a-dead", 1))
    async with meshkit.dial("echo", registry=registry,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        unary = ch.unary_unary(method("Unary"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(unary(b"x", timeout=5), 8)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "'echo'" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(unary(b"x", timeout=0.5, wait_for_ready=True), 8)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[int]:
    """A loopback TCP listener that accepts connections and never says a word: a gRPC
    client stays CONNECTING on it (no HTTP/2 settings arrive) for grpc's connect timeout
    (20 s), as with a peer that hangs in its handshake."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never written to

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for w in held:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@pytest.mark.parametrize("balancer", ["p2c", "ring-hash"])
async def test_a_call_is_not_held_on_a_connecting_endpoint_while_another_is_ready(
    registry: LocalRegistry, echo_servers: EchoFactory, balancer: str,
) -> None:
    """No call is picked onto an endpoint still connecting while another is READY (it
    would be held to its deadline): with P2C (the default) the second candidate of a
    READY first choice is READY too (a connecting one, with no calls pending, would win);
    RingHash without a key has no affinity to keep and picks a READY endpoint."""
    await echo_servers("a-good")
    async with silent_listener() as port:
        await registry.register(inst("b-stuck", port))  # both in the first answer
        opts = meshkit.DialOptions(insecure=True) if balancer == "p2c" else \
            meshkit.DialOptions(insecure=True, retry=None, outlier=None,
                                balancer=lambda: RingHash(rng=random.Random(7)))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=5)
            # b-stuck's connection attempt is under way (IDLE -> CONNECTING, both "IDLE"
            # here): no further change of the pool is to come while the calls run
            await asyncio.sleep(0.5)
            assert {e.key: e.state.name for e in ch.endpoints()} == {
                "a-good": "READY", "b-stuck": "IDLE"}
            sleep = ch.unary_unary(method("Sleep"))  # a-good has calls pending meanwhile

            async def one() -> object:
                try:
                    return await asyncio.wait_for(sleep(b"50", timeout=1.5), 5)
                except grpc.aio.AioRpcError as exc:
                    return f"{exc.code().name}: {exc.details()}"

            outcomes = await asyncio.gather(*(one() for _ in range(8)))
            states = {e.key: e.state.name for e in ch.endpoints()}
            assert states == {"a-good": "READY", "b-stuck": "IDLE"}  # still connecting
            assert outcomes == [b"a-good"] * 8, outcomes


# -- counters of instances that leave and come back, with many endpoints ---------------------
class _PushedRegistry:
    """A registry whose watch yields exactly the sets the test pushes (no timing)."""

    def __init__(self) -> None:
        self._sets: asyncio.Queue[frozenset[Instance]] = asyncio.Queue()

    def push(self, instances: list[Instance]) -> None:
        self._sets.put_nowait(frozenset(instances))

    async def register(self, instance: Instance) -> None:
        pass

    async def deregister(self, instance: Instance) -> None:
        pass

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        while True:
            yield await self._sets.get()

    async def close(self) -> None:
        pass


@pytest.mark.timeout(120)
async def test_endpoint_counters_do_not_go_backwards_with_more_than_256_endpoints() -> None:
    """A client dials a service of 300 instances (round robin) and every instance takes a
    call, so ``meshkit_client_endpoint_calls_total{instance_id}`` reads 1 for each. One
    instance flaps out of discovery (a heartbeat lapsed, a Consul check flapped) in the
    update that brings in a new instance, then comes back.

    The pool keeps each instance's counters in ``history`` so that the same instance back
    goes on counting ("Counters never go backwards", README Metrics). ``history`` was
    trimmed whenever it held more than 256 entries, by deleting up to 16 not present
    *now*; with more than 256 endpoints present it always held more, so the first
    ``_add`` after an instance left deleted its counters: its series vanished from
    ``/metrics`` and came back at 0, a counter reset that ``rate()``/``increase()`` read
    as a restart. Now 256 entries of instances that left are kept beside the present
    ones, however many those are: the returning instance's count is still at least 1."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler("x"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    reg = _PushedRegistry()
    insts = [Instance(service="big", instance_id=f"big-{i:04d}", host="127.0.0.1", port=port)
             for i in range(300)]
    newcomer = Instance(service="big", instance_id="big-new", host="127.0.0.1", port=port)
    ch = meshkit.dial("big", registry=reg,  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, balancer=RoundRobin))
    try:
        reg.push(insts)
        await ch.wait_for_endpoints(300, timeout_s=60)
        call = ch.unary_unary(method("Unary"))
        for _ in range(300):
            await call(b"x", timeout=20)

        def calls_of(instance_id: str) -> int | None:
            return {e.instance_id: e.calls for e in ch.stats().endpoints}.get(instance_id)

        def present() -> set[str]:
            return {e.key for e in ch.endpoints()}

        flapper = insts[0].instance_id
        before = calls_of(flapper)
        assert before is not None and before >= 1
        reg.push([*insts[1:], newcomer])  # the flapper leaves as a newcomer joins
        await until(lambda: flapper not in present() and "big-new" in present(),
                    timeout_s=30, what="the update")
        during = calls_of(flapper)
        reg.push([*insts, newcomer])  # ... and comes back
        await until(lambda: flapper in present(), timeout_s=30, what="the flapper's return")
        after = calls_of(flapper)
    finally:
        await ch.close()
        await server.stop(None)
    assert during == before, f"{flapper!r} left the stats while out ({before} -> {during})"
    assert after is not None and after >= before, (
        f"meshkit_client_endpoint_calls_total of {flapper!r} went {before} -> "
        f"{during} (while out) -> {after} (back): a counter going backwards")


@pytest.mark.timeout(120)
async def test_the_history_of_instances_that_left_is_bounded_beside_the_present_ones() -> None:
    """However many endpoints are present, the pool keeps the counters of at most about
    256 instances that left (the most recent), so a service whose instances get new ids
    at every deploy does not grow the history (and ``stats()``, ``/metrics``) forever;
    an instance among the last 256 to leave keeps its counters when it comes back."""
    reg = _PushedRegistry()
    ch = meshkit.dial("big", registry=reg,  # type: ignore[arg-type]
                      options=meshkit.DialOptions(insecure=True, balancer=RoundRobin,
                                                  drain_timeout_s=0.0))
    try:
        pool = ch._pool

        def gen(g: int, n: int = 300) -> list[Instance]:
            return [Instance(service="big", instance_id=f"g{g}-{i:04d}", host="127.0.0.1",
                             port=1) for i in range(n)]

        async def applied(answer: list[Instance]) -> None:
            # a large answer's endpoints are built a batch per loop turn (BUILD_BATCH)
            pool.apply(frozenset(answer))
            await until(lambda: len(pool.endpoints) == len(answer), timeout_s=30,
                        what="every endpoint of the answer in the pool")

        await applied(gen(0))
        for e in pool.endpoints.values():
            e.calls = 7
        for g in range(1, 5):  # four deploys, every instance a new id
            await applied(gen(g))
            assert len(pool.history) <= 300 + 256 + 16, len(pool.history)
        for e in pool.endpoints.values():  # generation 4
            e.calls = 5
        await applied(gen(5))
        assert len(pool.history) == 300 + 256
        back = gen(4)[-10:]  # among the last 256 to leave: counters kept
        await applied([*gen(5), *back])
        assert {pool.endpoints[i.instance_id].calls for i in back} == {5}
    finally:
        await ch.close()


@pytest.mark.timeout(60)
async def test_client_certificate_renewal_does_not_cut_an_open_stream(
    registry: LocalRegistry, tmp_path: Path,
) -> None:
    """A client over mTLS (``DialOptions(tls=...)``, ``drain_timeout_s=0.5``) has a bidi
    stream open to a healthy endpoint when its certificate file is renewed. The channel
    rebuilt the endpoint's sub-channel (``EndpointPool.rebuild``) and closed the old one
    after ``drain_timeout_s`` whatever still ran on it: the stream was cancelled and its
    reader got ``MeshRpcError`` ``CANCELLED`` "the channel was closed or its endpoint
    left" (neither happened); with the default 10 s every stream older than that (a
    watch, a subscription) was cut at every renewal. README ("clients rebuild their
    sub-channels with the renewed certificate without failing calls in flight") and
    ``DialOptions.tls`` promise otherwise, ``drain_timeout_s`` is the grace of "an
    endpoint that left the registry", and grpc-go's credential reloading never touches
    established connections: the old sub-channel is kept until its last call ends."""
    from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir
    from tests.support.echo import add_echo

    pki = tmp_path / "pki"
    init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=2)

    def issue(service: str, overwrite: bool = False) -> TLSOptions:
        files = issue_into_dir(pki, service, ttl_h=1.0, dns=("localhost",),
                               ips=("127.0.0.1",), overwrite=overwrite)
        return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                          key_file=files.key_file, reload_interval_s=0.05)

    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(tls=issue("echo"), drain_delay_s=0.0,
                                                          grace_s=1.0, instance_id="e1"))
    await srv.start()
    client_tls = issue("clientd")
    try:
        opts = meshkit.DialOptions(tls=client_tls, retry=None, drain_timeout_s=0.25)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            stream = ch.stream_stream(method("Bidi"))(timeout=45)
            await stream.write(b"1")
            assert await asyncio.wait_for(stream.read(), 10) == b"e1|1"
            key = ch.endpoints()[0].key
            old = ch._pool.conns[key].channel
            issue("clientd", overwrite=True)  # the certificate is renewed
            await until(lambda: ch._pool.conns[key].channel is not old, timeout_s=20,
                        what="sub-channel rebuilt with the renewed certificate")
            await asyncio.sleep(1.0)  # four times drain_timeout_s
            try:
                await asyncio.wait_for(stream.write(b"2"), 10)
                got = await asyncio.wait_for(stream.read(), 10)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                pytest.fail(f"an open stream was cut by the certificate renewal: {e!r}")
            assert got == b"e1|2"
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"x", timeout=10) == b"e1|x"  # on the new sub-channel
            await stream.done_writing()
            assert await asyncio.wait_for(stream.code(), 10) is grpc.StatusCode.OK
            # its last call ended: the old sub-channel is closed, the new one stays
            await until(lambda: not ch._pool._draining, timeout_s=20,
                        what="the old sub-channel closed after its last call")
            assert await unary(b"y", timeout=10) == b"e1|y"
    finally:
        await srv.drain()


@pytest.mark.timeout(60)
async def test_a_rebuilt_sub_channel_is_kept_under_load_until_its_own_calls_end(
    registry: LocalRegistry,
) -> None:
    """After ``rebuild_sub_channels()`` the old sub-channel of an endpoint under steady
    load (unary calls on the new one, so the endpoint always has calls in flight) is kept
    while its own stream runs, past ``drain_timeout_s``, and closed once that stream has
    ended, the new calls notwithstanding."""
    async with one_endpoint(registry, drain_timeout_s=0.2) as (ch, _):
        got: list[Any] = []
        call, reader = await _bidi_read(ch, got)
        ch.rebuild_sub_channels()
        sleep = ch.unary_unary(method("Sleep"))
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                await sleep(b"50", timeout=10)

        loaders = [asyncio.ensure_future(load()) for _ in range(3)]
        try:
            await asyncio.sleep(1.0)  # five times drain_timeout_s
            assert not reader.done(), reader
            assert ch._pool._draining, "the old sub-channel was closed under its stream"
            await call.write(b"b")
            assert await asyncio.wait_for(reader, 10) == b"e1|b"
            await call.done_writing()
            assert await asyncio.wait_for(call.code(), 10) is grpc.StatusCode.OK
            await until(lambda: not ch._pool._draining, timeout_s=20,
                        what="the old sub-channel closed once its stream ended")
            assert any(e.in_flight for e in ch.endpoints())  # the load went on
        finally:
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)


@pytest.mark.timeout(60)
async def test_an_endpoint_that_leaves_cuts_its_rebuilt_sub_channels_after_the_drain(
    registry: LocalRegistry,
) -> None:
    """A sub-channel kept after a rebuild for its open stream belongs to its endpoint:
    when the endpoint leaves the registry, the stream gets ``drain_timeout_s`` of grace,
    as on its current sub-channel, and is then cut (its reader gets
    ``MeshRpcError`` ``UNAVAILABLE``)."""
    async with one_endpoint(registry, drain_timeout_s=0.3) as (ch, i1):
        got: list[Any] = []
        _, reader = await _bidi_read(ch, got)
        ch.rebuild_sub_channels()
        await asyncio.sleep(0.6)  # past drain_timeout_s: kept for its stream
        assert not reader.done(), reader
        await registry.deregister(i1)
        await ended_cancelled_by_the_mesh(reader, "reader", timeout_s=10.0,
                                          code=grpc.StatusCode.UNAVAILABLE)
        await until(lambda: not ch._pool._draining, timeout_s=10,
                    what="every sub-channel of the endpoint closed")


def _failing_for(monkeypatch: pytest.MonkeyPatch, ports: set[int]) -> None:
    """Make building the sub-channel of an address whose port is in ``ports`` raise (as
    grpc does for a channel argument it refuses, or a process out of file descriptors),
    for every channel dialed from now on."""
    real = meshkit.channel.MeshChannel._sub_channel

    def sub_channel(self: Any, address: str) -> grpc.aio.Channel:
        if int(address.rsplit(":", 1)[1]) in ports:
            raise TypeError("Expected int, bytes, or behavior, got <class 'NoneType'>")
        return real(self, address)

    monkeypatch.setattr(meshkit.channel.MeshChannel, "_sub_channel", sub_channel)


async def test_a_sub_channel_that_cannot_be_built_fails_calls_and_closes_cleanly(
    registry: LocalRegistry, echo_servers: EchoFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``EndpointPool._add`` put the endpoint in ``endpoints`` before its sub-channel was
    made; when making it raised, the discovery watch logged "discovery watch failed" (and
    counted a watch error) and retried, the next answer handed the balancer the
    connection-less endpoint, every call waited for it until its deadline ("deadline
    exceeded waiting for a connection") and ``MeshChannel.close()`` raised ``KeyError``.
    Now the endpoint is kept out: a call fails at once ``UNAVAILABLE`` saying why, the
    failure is logged once per endpoint as a sub-channel error (not at every answer),
    another endpoint serves, and ``close()`` works."""
    s1 = await echo_servers("e1")
    assert s1.port is not None
    _failing_for(monkeypatch, {s1.port})
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=None))
    closed = False
    try:
        with structlog.testing.capture_logs() as logs:
            await until(lambda: ch._pool.resolved.is_set(), timeout_s=10,
                        what="the first discovery answer")
            unary = ch.unary_unary(method("Unary"))
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(unary(b"x", timeout=4.0), 10)
            took = time.monotonic() - started
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "sub-channel" in (err.value.details() or ""), err.value.details()
            assert took < 2.0, f"the call waited {took:.1f}s for an endpoint never usable"
            await echo_servers("e2")  # another answer: e1 still out, not logged again
            await ch.wait_for_endpoints(1)
            assert await asyncio.wait_for(unary(b"x", timeout=4.0), 10) == b"e2|x"
            assert [e.key for e in ch.endpoints()] == ["e2"]
        errors = [e for e in logs if "sub-channel" in e["event"]]
        assert [e.get("instance_id") for e in errors] == ["e1"], errors
        assert not [e for e in logs if e["event"].startswith("discovery watch failed")]
        assert ch.watch_errors == 0
        assert ch._pool.sub_channel_errors == 1
        async with asyncio.timeout(10):
            await ch.close()  # KeyError: 'e1' as found
        closed = True
    finally:
        if not closed:
            await _force_close(ch)


async def test_a_sub_channel_that_cannot_be_rebuilt_keeps_the_current_one(
    registry: LocalRegistry, echo_servers: EchoFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rebuild()`` (a renewed client certificate) whose new sub-channel cannot be built
    raised out of the certificate watch, ending it (no renewal was applied after), and
    left the other endpoints unrebuilt. Now the endpoint keeps its current sub-channel
    (logged), the others are rebuilt, and calls go on."""
    s1 = await echo_servers("e1")
    await echo_servers("e2")
    assert s1.port is not None
    async with meshkit.dial("echo", registry=registry,
                            options=meshkit.DialOptions(insecure=True, retry=None,
                                                            balancer=RoundRobin)) as ch:
        await ch.wait_for_endpoints(2)
        pool = ch._pool
        before = dict(pool.conns)
        real = pool._make_channel

        def make_channel(address: str) -> grpc.aio.Channel:
            if address.endswith(f":{s1.port}"):
                raise TypeError("Expected int, bytes, or behavior, got <class 'NoneType'>")
            return real(address)

        monkeypatch.setattr(pool, "_make_channel", make_channel)
        with structlog.testing.capture_logs() as logs:
            ch.rebuild_sub_channels()
        assert pool.conns["e1"] is before["e1"]
        # (make-before-break: e2's new sub-channel is taken into use once connected)
        await until(lambda: pool.conns["e2"] is not before["e2"], timeout_s=10,
                    what="e2 on its rebuilt sub-channel")
        assert [e.get("instance_id") for e in logs if "sub-channel" in e["event"]
                and e["log_level"] in ("warning", "error")] == ["e1"], logs
        assert pool.sub_channel_errors == 1
        unary = ch.unary_unary(method("Unary"))  # round robin: P2C may keep to one
        assert await served_by(unary, 8) == {b"e1", b"e2"}


async def test_a_sub_channel_that_failed_to_build_once_is_built_again(
    registry: LocalRegistry, echo_servers: EchoFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0cf258b kept an endpoint whose sub-channel could not be built out of the pool and
    tried again only at the next discovery answer. A registry whose set of instances does
    not change gives none, so a transient failure (a process briefly out of file
    descriptors: ``OSError(EMFILE)``) kept the only endpoint out for good: every call
    failed UNAVAILABLE "could not be built" although building worked again at once. Now
    the build is retried with a backoff while an endpoint is kept out."""
    await echo_servers("e1")
    real = meshkit.channel.MeshChannel._sub_channel
    fails = [1]

    def sub_channel(self: Any, address: str) -> grpc.aio.Channel:
        if fails:
            fails.pop()
            raise OSError(24, "Too many open files")
        return real(self, address)

    monkeypatch.setattr(meshkit.channel.MeshChannel, "_sub_channel", sub_channel)
    async with asyncio.timeout(20), meshkit.dial(
            "echo", registry=registry,
            options=meshkit.DialOptions(insecure=True, retry=None)) as ch:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            method("Unary"))
        got: list[Any] = []
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            try:
                got.append(await unary(b"x", timeout=2.0))
                break
            except grpc.aio.AioRpcError as exc:
                got.append(exc.details())
            await asyncio.sleep(0.5)
        assert got[-1] == b"e1|x", (
            f"8 s after one failed build the endpoint is still kept out: {got[-1]!r}")
        assert not fails
        assert ch._pool.sub_channel_errors == 1


async def test_a_sub_channel_that_failed_to_rebuild_once_is_rebuilt_again(
    registry: LocalRegistry, echo_servers: EchoFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild (a renewed client certificate) that failed for an endpoint kept its
    current sub-channel, with the old credentials, until the next renewal (the next
    ``rebuild()``), however long. Now the rebuild of that endpoint is retried with a
    backoff, and counted and logged once."""
    await echo_servers("e1")
    async with asyncio.timeout(20), meshkit.dial(
            "echo", registry=registry,
            options=meshkit.DialOptions(insecure=True, retry=None)) as ch:
        await ch.wait_for_endpoints(1)
        pool = ch._pool
        before = pool.conns["e1"]
        real = pool._make_channel
        fails = [1]

        def make_channel(address: str) -> grpc.aio.Channel:
            if fails:
                fails.pop()
                raise OSError(24, "Too many open files")
            return real(address)

        monkeypatch.setattr(pool, "_make_channel", make_channel)
        with structlog.testing.capture_logs() as logs:
            ch.rebuild_sub_channels()
            assert pool.conns["e1"] is before
            await until(lambda: pool.conns["e1"] is not before, timeout_s=8,
                        what="the failed rebuild retried")
        assert [e.get("instance_id") for e in logs if "sub-channel" in e["event"]
                and e["log_level"] in ("warning", "error")] == ["e1"], logs
        assert pool.sub_channel_errors == 1
        unary = ch.unary_unary(method("Unary"))
        assert await served_by(unary, 4) == {b"e1"}


async def _force_close(ch: Any) -> None:
    """What ``close()`` left undone after its KeyError: the pool's sub-channels and tasks
    (so a failing test leaves nothing running behind it)."""
    pool = ch._pool
    for conn in list(pool.conns.values()):
        await conn.channel.close()
    tasks = [*pool._tasks, *pool._draining, pool._watch_task]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _SubChannel:
    """What ``_Conn.close`` uses of a grpc.aio channel: its calls and ``close()``."""

    def __init__(self) -> None:
        self._active_calls: set[Any] = set()
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_sub_channel_is_closed_even_when_its_grace_is_refused() -> None:
    """``_Conn.close`` computed the drain's end (``cut()``) before its ``try``: a grace
    ``cut()`` refused (``"1"``: ``TypeError``) skipped the ``finally`` that closes the
    sub-channel, and ``EndpointPool.close`` (gathering with ``return_exceptions``) dropped
    the error: the sub-channel and its calls lived on. The error is now raised once the
    sub-channel is closed (``MeshChannel.close`` refuses such a grace before)."""
    from meshkit._pool import _Conn
    from meshkit.balancer import Endpoint

    sub = _SubChannel()
    conn = _Conn(sub)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await conn.close(Endpoint(inst("e1", 1)), "1")  # type: ignore[arg-type]
    assert sub.closed


# -- connections a server closes as idle (gRFC A9 MAX_CONNECTION_IDLE) --------------------

# idle connections closed after 0.5 s (the waits below are in periods of it)
_IDLE_LIMITS = meshkit.ServerLimits(max_connection_idle_s=0.5)


async def test_an_idle_client_does_not_reopen_connections_a_server_closed_as_idle(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """User: runs a meshkit client against a meshkit server that closes idle connections
    (``ServerLimits.max_connection_idle_s``, 300 s by default; 1 s here) and leaves the
    client idle.
    Saw: the pool asked the endpoint's sub-channel to connect on every state change, IDLE
    included, so the client opened a new connection (a TCP and, with mTLS, a TLS
    handshake on both sides) within milliseconds of every GOAWAY, for ever: 4 in 5.5 s
    here while nothing was called (a raw grpc.aio channel through the same proxy: 0).
    The server never got its idle connections back.
    Now: a connection that carried no call goes IDLE and stays IDLE until a call picks
    it (gRPC's connectivity semantics: "channels that receive a GOAWAY when there are no
    active or pending RPCs should also switch to IDLE"; ``ServerLimits``: "clients
    reconnect on their next call"): at most the connection the first call used is
    opened again once, and the next call connects and succeeds."""
    srv = await echo_servers("b1", service="idle-backend", limits=_IDLE_LIMITS)
    async with TcpProxy("127.0.0.1", srv.port) as mesh_proxy, \
            TcpProxy("127.0.0.1", srv.port) as raw_proxy:
        await registry.register(Instance(service="idle", instance_id="via-proxy",
                                         host="127.0.0.1", port=mesh_proxy.port))
        opts = meshkit.DialOptions(insecure=True)
        async with meshkit.dial("idle", registry=registry, options=opts) as ch, \
                grpc.aio.insecure_channel(raw_proxy.address) as raw:
            unary = ch.unary_unary(method("Unary"))
            assert (await unary(b"x", timeout=5.0)).startswith(b"b1|")
            await raw.unary_unary(method("Unary"))(b"x", timeout=5.0)
            mesh_before, raw_before = mesh_proxy.accepted, raw_proxy.accepted
            await asyncio.sleep(2.75)  # idle: about five max_connection_idle_s periods
            mesh_reopened = mesh_proxy.accepted - mesh_before
            raw_reopened = raw_proxy.accepted - raw_before
            # the next call connects again and is served
            assert (await unary(b"y", timeout=5.0)).startswith(b"b1|")
    assert raw_reopened == 0, "control: grpc.aio keeps an idle channel IDLE"
    assert mesh_reopened <= 1, (
        f"an idle meshkit client reopened {mesh_reopened} connections in 2.75 s that the "
        f"server closed as idle (max_connection_idle_s=0.5); grpc.aio: {raw_reopened}")


@pytest.mark.parametrize("balancer", ["round_robin", "p2c"])
async def test_the_first_call_after_an_idle_period_connects_every_idle_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory, balancer: str,
) -> None:
    """Endpoints whose connections the servers closed as idle stay IDLE; the first call
    after the idle period is not failed ``UNAVAILABLE`` (every endpoint IDLE is no
    endpoint failing): it asks them to connect, waits for one connection (as gRPC's
    first call on an IDLE channel) and is served. Every IDLE endpoint is asked, not only
    the one picked (gRPC's channel leaving IDLE connects all of round_robin's
    subchannels): the balancers send calls to READY endpoints only while one is, so an
    endpoint left IDLE would get no call again, and the calls would all go to the one
    that connected."""
    await echo_servers("e1", limits=_IDLE_LIMITS)
    await echo_servers("e2", limits=_IDLE_LIMITS)
    chosen = RoundRobin if balancer == "round_robin" else P2C
    opts = meshkit.DialOptions(insecure=True, retry=None, balancer=chosen)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        # no call: both connections are closed as idle and stay so
        await until(lambda: all(e.state is EndpointState.IDLE
                                for e in ch.endpoints()), timeout_s=5.0, what="both IDLE")
        await asyncio.sleep(0.75)  # 1.5 max_connection_idle_s periods: still IDLE
        assert all(e.state is EndpointState.IDLE for e in ch.endpoints())
        pool = ch._pool
        assert all(pool.conns[e.key].channel.get_state() is grpc.ChannelConnectivity.IDLE
                   for e in ch.endpoints()), "an idle endpoint was connected again"
        unary = ch.unary_unary(method("Unary"))
        assert (await unary(b"x", timeout=5.0)).split(b"|")[0] in {b"e1", b"e2"}
        await until(lambda: all(e.state is EndpointState.READY
                                for e in ch.endpoints()), timeout_s=3.0, what="both READY")
        if balancer == "round_robin":
            assert await served_by(unary, 4) == {b"e1", b"e2"}


async def test_a_connection_that_drops_under_calls_is_reconnected_at_once(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """A connection that carried calls and drops (the server died, a restart, a
    ``max_connection_age_s`` GOAWAY) is connected again at once, without waiting for a
    call, so an endpoint that is gone shows as failing before a call is sent to it (and
    one that comes back is READY again, in rotation beside the others)."""
    srv = await echo_servers("e1")
    async with TcpProxy("127.0.0.1", srv.port) as proxy:
        await registry.register(Instance(service="proxied", instance_id="via-proxy",
                                         host="127.0.0.1", port=proxy.port))
        opts = meshkit.DialOptions(insecure=True, retry=None)
        async with meshkit.dial("proxied", registry=registry, options=opts) as ch:
            unary = ch.unary_unary(method("Unary"))
            await unary(b"x", timeout=5.0)
            await proxy.stop()
            await until(lambda: ch.endpoints()[0].state
                        is EndpointState.FAILING,
                        timeout_s=5.0, what="the dead endpoint shown FAILING")
            accepted = proxy.accepted
            await proxy.start()
            await until(lambda: ch.endpoints()[0].state
                        is EndpointState.READY,
                        timeout_s=10.0, what="the endpoint READY again without a call")
            assert proxy.accepted > accepted


async def test_channel_ready_and_wait_for_endpoints_connect_endpoints_left_idle(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """Once the server closed the idle connection, the endpoint stays IDLE until a call
    (above); ``channel_ready()`` and ``wait_for_endpoints()`` then waited for a READY
    endpoint nothing asked to connect, until their timeouts (3 s seen). They ask IDLE
    endpoints to connect, as grpc.aio's ``channel_ready`` does, and return."""
    await echo_servers("b1", service="idle", limits=_IDLE_LIMITS)
    opts = meshkit.DialOptions(insecure=True)
    async with meshkit.dial("idle", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1, timeout_s=5.0)
        assert (await ch.unary_unary(method("Unary"))(b"x", timeout=5.0)).startswith(b"b1|")
        await until(lambda: ch.get_state() is not grpc.ChannelConnectivity.READY,
                    timeout_s=10, what="the server's idle GOAWAY")
        await asyncio.wait_for(ch.channel_ready(), 5.0)
        await until(lambda: ch.get_state() is not grpc.ChannelConnectivity.READY,
                    timeout_s=10, what="the server's idle GOAWAY again")
        await ch.wait_for_endpoints(1, timeout_s=5.0)


async def test_an_endpoint_left_idle_beside_a_busy_one_comes_back_into_rotation(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """One endpoint's connection, unused after a pause, closed by its server as idle
    while the other endpoint's stayed open: the endpoint was left IDLE, and since the
    balancers send calls to READY endpoints while one is, it got no call again once
    traffic resumed (all of it on the other: half the capacity) until every endpoint went
    idle at once. Any call is activity: the endpoints left IDLE are asked to connect and
    come back into rotation."""
    await echo_servers("busy", service="pair")
    await echo_servers("idler", service="pair", limits=_IDLE_LIMITS)
    opts = meshkit.DialOptions(insecure=True, balancer=RoundRobin)
    async with meshkit.dial("pair", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2, timeout_s=5.0)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(4):
            await unary(b"x", timeout=5.0)
        # a pause: the idler's connection is closed as idle (reopened once, as it carried
        # calls, then closed again unused), the busy one's stays
        await until(lambda: ch._pool._idle == {"idler"}, timeout_s=15,
                    what="the idler left IDLE")
        served = [(await unary(b"y", timeout=5.0)).split(b"|")[0] for _ in range(3)]
        await until(lambda: not ch._pool._idle, timeout_s=5, what="connect_idle")
        await ch.wait_for_endpoints(2, timeout_s=5.0)
        served += [(await unary(b"y", timeout=5.0)).split(b"|")[0] for _ in range(6)]
    assert b"idler" in served, served
