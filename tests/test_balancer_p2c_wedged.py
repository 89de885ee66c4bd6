"""P2C over peak EWMA and a wedged endpoint: one that answered, then stopped answering
(a deadlocked handler behind a live connection), to callers that set no deadline (gRPC's
default). Its calls stay pending and give no outcome, so nothing ejects it; the decay of
its latency estimate towards zero (there to retry an endpoint P2C avoided) must not win
over its pending count, or its load ``estimate * (pending + 1)`` falls exponentially in
time while its pending calls grow, and it draws a growing share of the calls into a
black hole (with ``decay_s`` 10 s: all of them after about a minute, beside one healthy
peer). An endpoint with calls pending is not avoided: its estimate stays at least what it
was at its last outcome while they are."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import P2C, P2COptions
from meshkit.balancer._endpoint import Done
from meshkit.discovery import LocalRegistry
from tests.support.balancing import Clock
from tests.support.balancing import ready_endpoint as _ep
from tests.support.wait import until

OK = grpc.StatusCode.OK


def test_a_wedged_endpoint_does_not_draw_the_calls_as_its_estimate_decays() -> None:
    """Two endpoints answering in 10 ms; then ``a`` wedges (its calls never end) and 50
    calls a second go on for two minutes. ``a`` keeps a handful of calls at most, and
    none of the last 20 s: before, its estimate had decayed by exp(-12) and it took
    nearly every call of the last 20 s."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(3), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    for _ in range(200):  # warm: both answer in 10 ms
        got = p.pick()
        assert got is not None
        clock.t += 0.01
        got[1](OK, 0.01)
    hung: list[Done] = []
    late_a = late = 0
    for i in range(6000):  # 120 s at 50 calls/s
        clock.t += 0.02
        got = p.pick()
        assert got is not None
        if got[0] is a:
            hung.append(got[1])  # never answered
        else:
            got[1](OK, 0.01)
        if i >= 5000:
            late += 1
            late_a += got[0] is a
    assert len(hung) <= 20, len(hung)
    assert late_a == 0, f"{late_a} of the last {late} calls went to the wedged endpoint"
    # once it answers again (its calls end, slowly) it is a sampled endpoint as before
    for done in hung:
        done(OK, 120.0)
    assert p.load(a) > p.load(b)


def test_the_estimate_of_an_idle_endpoint_still_decays() -> None:
    """The decay still does its job: an endpoint avoided after a slow answer (no call
    pending on it) is tried again once its estimate decays below its peer's."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=1.0, slow_start_s=0.0), rng=random.Random(4), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    got = p.pick()
    assert got is not None
    slow, fast = (a, b) if got[0] is a else (b, a)
    got[1](OK, 2.0)  # the first picked answered slowly
    seen = set()
    for _ in range(400):
        clock.t += 0.05
        got = p.pick()
        assert got is not None
        seen.add(got[0].key)
        got[1](OK, 0.01)
    assert slow.key in seen and fast.key in seen


_SERVICE = "meshkit.test.Wedge"


def _wedging(instance_id: str, wedged: asyncio.Event) -> tuple[Any, None]:
    """A MeshServer service whose ``Call`` answers its instance id, or, once ``wedged``
    is set on instance ``a``, never (until cancelled)."""

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if instance_id == "a" and wedged.is_set():
            await asyncio.Event().wait()
        return instance_id.encode()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            _SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}),))

    return add, None


@contextlib.asynccontextmanager
async def _two_servers(registry: LocalRegistry,
                       wedged: asyncio.Event) -> AsyncIterator[None]:
    servers = []
    try:
        for iid in ("a", "b"):
            srv = meshkit.MeshServer("wedge", [_wedging(iid, wedged)], registry=registry,
                                     options=meshkit.ServeOptions(
                                         insecure=True, instance_id=iid, drain_delay_s=0.0,
                                         grace_s=0.1, maximum_concurrent_rpcs=10_000))
            await srv.start()
            servers.append(srv)
        yield
    finally:
        for srv in servers:
            await srv.drain()


@pytest.mark.timeout(60)
async def test_dial_a_wedged_instance_does_not_swallow_the_calls(
    registry: LocalRegistry,
) -> None:
    """Through dial() (P2C with decay_s 0.1 s, so the 3 s of the test are 30 time
    constants; the servers' concurrency limit raised, which otherwise bounds the harm at
    32 hung calls and answers the next ones RESOURCE_EXHAUSTED): instance ``a``
    answers, then wedges; 200 calls without a deadline, one every 15 ms, are started.
    Before, most of them hung on ``a`` (its estimate decayed by up to exp(-30) while its
    pending calls grew); now a few do (those sent before its load, held at its estimate
    when it got busy, times its pending calls, passes ``b``'s), the rest answered by
    ``b``."""
    wedged = asyncio.Event()
    opts = meshkit.DialOptions(
        insecure=True, retry=None,
        balancer=functools.partial(P2C, P2COptions(decay_s=0.1, slow_start_s=0.0)))
    async with _two_servers(registry, wedged), \
            meshkit.dial("wedge", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        unary = ch.unary_unary(f"/{_SERVICE}/Call")
        seen: set[bytes] = set()
        for _ in range(200):  # warm: both answer (a latency sample each)
            seen.add(await unary(b"", timeout=10))
            if seen == {b"a", b"b"}:
                break
        assert seen == {b"a", b"b"}
        wedged.set()
        calls = []
        for _ in range(200):
            calls.append(asyncio.ensure_future(unary(b"")))
            await asyncio.sleep(0.015)
        answered = [c for c in calls if c.done()]
        with contextlib.suppress(AssertionError):  # (judged below, by the count)
            await until(lambda: sum(c.done() for c in calls) >= len(calls) - 40,
                        timeout_s=10, what="the calls not on the wedged instance answered")
        hung = [c for c in calls if not c.done()]
        for c in hung:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    assert len(hung) <= 40, f"{len(hung)} of 200 calls hung on the wedged instance"
    assert answered and all(c.result() == b"b" for c in calls if c.done()
                            and not c.cancelled() and c.exception() is None)
