"""Cancellation races of calls waiting for an endpoint (meshkit/_pool.py pick_slow,
meshkit/_calls.py), through a real channel and servers on loopback.

A cancel() (or any task.cancel()) of a call waiting in EndpointPool.pick_slow that lands in
the loop turn its wait ends must not be lost: Python 3.11's asyncio.wait_for returns the
inner result and drops such a cancellation, so the pool waits with asyncio.timeout. And a
cancelled outlier probe makes its endpoint pickable again: a call waiting for an endpoint
must be woken."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until

OK = grpc.StatusCode.OK


def _opts(**kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, **kw)


def _settled_counts(ch: Any) -> tuple[list[int], list[Any]]:
    st = ch.stats()
    return [e.in_flight for e in st.endpoints], [e.pending for e in st.endpoints]


async def test_unary_cancel_as_its_endpoint_appears_is_not_sent(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A wait_for_ready unary call cancelled (cancel(), from another task) in the loop turn
    its endpoint shows up must end CANCELLED, not be sent and answered anyway."""
    served: list[str] = []
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await asyncio.sleep(0.2)  # discovery answered: no instance
        call = ch.unary_unary(method("Sleep"))(b"200", timeout=5, wait_for_ready=True)

        async def run() -> Any:
            task = asyncio.current_task()
            assert task is not None
            try:
                return await call, task.cancelling()
            except asyncio.CancelledError:
                return "cancelled", task.uncancel()

        caller = asyncio.ensure_future(run())
        await asyncio.sleep(0.05)  # waiting in pick_slow for an endpoint
        pool = ch._pool
        orig = pool.notify

        def notify_then_cancel() -> None:  # the endpoint appears; cancel() lands this turn
            orig()
            if pool.endpoints and not call.done():
                call.cancel()

        pool.notify = notify_then_cancel  # type: ignore[method-assign]
        await echo_servers("e1", served=served)
        # expected: ("cancelled", 0) -- the await raises CancelledError, nothing pending on
        # the caller's task; got: (b"e1", 1) -- sent, answered, cancelling() left at 1
        assert await asyncio.wait_for(caller, 5) == ("cancelled", 0)
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert served == []


async def test_stream_cancel_as_its_endpoint_appears_leaves_nothing_open(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A wait_for_ready bidi stream cancelled in the turn its endpoint appears is settled
    CANCELLED at once; its opening must not go on and leave a stream open for nobody
    (ep.in_flight and P2C's pending back to 0)."""
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await asyncio.sleep(0.2)
        call = ch.stream_stream(method("Bidi"))(timeout=30, wait_for_ready=True)
        call.add_done_callback(lambda _c: None)  # starts the opening
        await asyncio.sleep(0.05)
        pool = ch._pool
        orig = pool.notify

        def notify_then_cancel() -> None:
            orig()
            if pool.endpoints and not call.done():
                call.cancel()

        pool.notify = notify_then_cancel  # type: ignore[method-assign]
        await echo_servers("e1")
        await until(lambda: call.done())
        assert call.cancelled()
        await asyncio.sleep(0.3)
        # the opening went on after cancel(): a bidi stream is open on e1 that nobody holds
        # (it lives until its 30 s deadline), counted in_flight 1 and P2C pending 1
        assert _settled_counts(ch) == ([0], [0])
        assert [e.calls for e in ch.stats().endpoints] == [0], "the stream was opened"


def _eject_fast() -> meshkit.DialOptions:
    from meshkit.balancer import OutlierOptions
    return _opts(retry=None, outlier=OutlierOptions(
        consecutive_failures=1, base_ejection_s=0.3, max_ejection_percent=100.0))


async def test_wait_for_ready_call_wakes_when_a_probe_is_cancelled(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """The only endpoint is ejected; its ejection ends and call A is its probe. Call B
    (wait_for_ready) used to wait for A's verdict, and when A was cancelled nothing woke
    it: it waited out its whole deadline. Now nothing left in rotation sends B to the
    ejected endpoint at once (panic routing); A cancelled leaves the endpoint half-open,
    and the next call probes it and brings it back."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_eject_fast()) as ch:
        await ch.wait_for_endpoints(1)
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=5)
        await asyncio.sleep(0.4)  # the ejection is over: the next pick is the probe
        probe = asyncio.ensure_future(ch.unary_unary(method("Sleep"))(b"3000", timeout=5))
        await until(lambda: ch.stats().endpoints[0].in_flight == 1)
        t0 = time.monotonic()
        waiter = asyncio.ensure_future(
            ch.unary_unary(method("Unary"))(b"x", timeout=3, wait_for_ready=True))
        assert await asyncio.wait_for(waiter, 5) == b"e1|x"
        assert time.monotonic() - t0 < 1.0  # not held behind the probe
        assert not probe.done()
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        assert [e.ejected for e in ch.stats().endpoints] == [True]
        assert await ch.unary_unary(method("Unary"))(b"y", timeout=3) == b"e1|y"  # probe
        await until(lambda: [e.ejected for e in ch.stats().endpoints] == [False])
