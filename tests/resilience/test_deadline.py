"""Deadline propagation across two hops and admission control, on real servers."""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import (
    MAX_PROPAGATED_S,
    DeadlineInterceptor,
    DeadlineOptions,
    clamp_timeout_s,
    current_deadline,
    deadline_scope,
)
from meshkit.resilience._deadline import wire_cut_s
from tests.conftest import EchoFactory
from tests.support.echo import handler, method, raw_server


def service(name: str, behaviour: Any) -> tuple[Any, None]:
    """An ``(add_fn, servicer)`` pair for a one-method bytes service ``name``/Call."""

    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    name, {"Call": grpc.unary_unary_rpc_method_handler(behaviour)}
                ),
            )
        )

    return add, None


async def test_two_hop_deadline_never_runs_second_hop_past_it(registry: LocalRegistry) -> None:
    """A 200 ms deadline on hop 1 bounds hop 2: it sees < 200 ms and is cancelled in time."""
    seen: dict[str, float] = {}
    hop2_done = asyncio.Event()

    async def slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen["hop2_remaining"] = context.time_remaining() or 0.0
        seen["hop2_start"] = time.monotonic()
        try:
            await asyncio.sleep(5)
            seen["hop2_finished"] = time.monotonic()
        finally:
            seen["hop2_end"] = time.monotonic()
            hop2_done.set()
        return b"late"

    hop2_channel = meshkit.dial(
        "hop2", registry=registry, options=meshkit.DialOptions(insecure=True, retry=None)
    )

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen["hop1_deadline"] = current_deadline() or 0.0
        return await hop2_channel.unary_unary("/hop2/Call")(request)  # no timeout given

    s1 = meshkit.MeshServer(  # deadline admission and propagation are on by default
        "hop1",
        [service("hop1", relay)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0),
    )
    s2 = meshkit.MeshServer(
        "hop2",
        [service("hop2", slow)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0),
    )
    await s1.start()
    await s2.start()
    try:
        async with meshkit.dial(
            "hop1", registry=registry, options=meshkit.DialOptions(insecure=True)
        ) as ch:
            await hop2_channel.wait_for_endpoints(1)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/hop1/Call")(b"x", timeout=0.2)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(hop2_done.wait(), 4)
        assert seen["hop2_remaining"] <= 0.205  # grpc-timeout on the wire rounds up slightly
        assert "hop2_finished" not in seen
        # cancelled by the propagated deadline (asserted above), not after its 5 s sleep;
        # the bound leaves room for a loaded machine
        assert seen["hop2_end"] - t0 < 1.5
    finally:
        await hop2_channel.close()
        await s1.drain()
        await s2.drain()


async def test_margin_is_subtracted(registry: LocalRegistry) -> None:
    """With deadline_margin_s, outgoing calls get the inherited deadline minus the margin.

    Judged as a point in time, not as time left: the handler records the deadline it was
    given (``time.monotonic() + time_remaining()``, one process, one clock) against the
    scope's deadline minus the margin. Time left at the handler also lost whatever the
    call took to get there (the first call's connection: 334 ms on a loaded 2-core box,
    read as 0.449 s left of 1.0 - 0.3, below the 0.5 bound). Bounds: not before the
    scope's deadline minus the 2 s margin by more than the grid a propagated timeout is
    lowered to (``wire_cut_s``: 15 ms for 9 s), and at least 1 s (half the margin) before
    the scope's own deadline, which leaves the call's transit a second (gRPC sends a
    timeout, not a time: the server's deadline is the client's plus the transit). A call
    sent without the margin, or with it subtracted twice, is 2 s off."""
    deadlines: list[float] = []

    async def report(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        left = context.time_remaining()
        deadlines.append(time.monotonic() + (left if left is not None else math.inf))
        return b"ok"

    srv = meshkit.MeshServer(
        "m",
        [service("m", report)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0),
    )
    await srv.start()
    try:
        opts = meshkit.DialOptions(insecure=True, deadline_margin_s=2.0)
        async with meshkit.dial("m", registry=registry, options=opts) as ch:
            scope = time.monotonic() + 9.0  # under 10 s: a 10 ms grid (wire_unit_s)
            with deadline_scope(scope):
                await ch.unary_unary("/m/Call")(b"")
                sent = time.monotonic()
                await ch.unary_unary("/m/Call")(b"", timeout=3.0)  # own, shorter timeout wins
        early = wire_cut_s(9.0) + 0.001  # the grid, and grpc's millisecond clock
        assert scope - 2.0 - early <= deadlines[0] <= scope - 1.0, deadlines[0] - scope
        assert sent + 3.0 - 0.002 <= deadlines[1] <= sent + 3.0 + 1.0, deadlines[1] - sent
    finally:
        await srv.drain()


async def test_admission_rejects_calls_without_enough_time(registry: LocalRegistry) -> None:
    """A call with less than min_remaining_s left is DEADLINE_EXCEEDED before the handler."""
    ran: list[bytes] = []

    async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        ran.append(request)
        return b"ok"

    srv = meshkit.MeshServer(
        "adm",
        [service("adm", handler)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                     deadline=DeadlineOptions(min_remaining_s=0.5)),
    )
    await srv.start()
    try:
        async with meshkit.dial(
            "adm", registry=registry, options=meshkit.DialOptions(insecure=True)
        ) as ch:
            call = ch.unary_unary("/adm/Call")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"short", timeout=0.3)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert await call(b"long", timeout=2) == b"ok"
            assert await call(b"none") == b"ok"  # no deadline: nothing to check
        assert ran == [b"long", b"none"] and srv.stats().deadline_rejections == 1
    finally:
        await srv.drain()


async def test_default_method_timeouts(registry: LocalRegistry) -> None:
    """Per-method default timeouts apply to calls made without one."""

    async def slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await asyncio.sleep(5)
        return b"late"

    srv = meshkit.MeshServer(
        "t",
        [service("t", slow)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, grace_s=0),
    )
    await srv.start()
    try:
        opts = meshkit.DialOptions(insecure=True, method_timeouts={"t/Call": 0.1}, retry=None)
        async with meshkit.dial("t", registry=registry, options=opts) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/t/Call")(b"")
            took = time.monotonic() - t0
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert took < 2.5  # the 0.1 s method timeout, not the 5 s handler
    finally:
        await srv.drain()
    with pytest.raises(meshkit.ConfigError, match="-1"):
        meshkit.DialOptions(insecure=True, method_timeouts={"x": -1})


@pytest.mark.parametrize("value", [math.inf, math.nan, -1, True, "0.1"])
def test_interceptor_checks_min_remaining_as_the_options_do(value: object) -> None:
    """DeadlineInterceptor took ``inf`` (every call refused), ``True`` and a string
    (``TypeError`` per call) that DeadlineOptions refuses; same check, same message."""
    for build in (lambda: DeadlineOptions(min_remaining_s=value),  # type: ignore[arg-type]
                  lambda: DeadlineInterceptor(min_remaining_s=value)):  # type: ignore[arg-type]
        with pytest.raises(meshkit.ConfigError, match="min_remaining_s") as err:
            build()
        assert repr(value) in str(err.value)


class _Context:
    """A server call's context as the admission check reads it: the time left, an abort."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        self.aborted: list[grpc.StatusCode] = []

    def time_remaining(self) -> float:
        return self.remaining

    def abort(self, code: grpc.StatusCode, details: str,
              trailing_metadata: Any = ()) -> Any:  # grpc.aio's signature
        self.aborted.append(code)
        return None


@pytest.mark.parametrize(("min_remaining_s", "remaining", "admitted"), [
    (0.5, 0.5, True),
    (0.5, 0.4999, False),
    (0.5, 0.5001, True),
    (0.0, 0, False),  # a passed deadline reads as 0 left: refused
    (0.0, 0.001, True),
])
def test_admission_refuses_only_less_time_left_than_min_remaining(
        min_remaining_s: float, remaining: float, admitted: bool) -> None:
    """The documented rule is "calls with less time left than this are refused": a call
    with exactly min_remaining_s left was refused too (``<=``). One whose deadline passed
    (grpc reads it as 0 left, never less) is still refused with the default 0."""
    interceptor = DeadlineInterceptor(min_remaining_s=min_remaining_s)
    context = _Context(remaining)
    # in a context of its own, as each call's task: the admitted call's deadline stays there
    contextvars.copy_context().run(interceptor._admit, context)  # type: ignore[arg-type]
    assert (context.aborted == []) is admitted
    assert interceptor.rejected == (0 if admitted else 1)
    assert context.aborted in ([], [grpc.StatusCode.DEADLINE_EXCEEDED])


# -- issue 12 item 7: the longest legal grpc-timeout --------------------------------------
async def test_longest_legal_grpc_timeout_propagates_across_two_hops(
    registry: LocalRegistry,
) -> None:
    """``grpc-timeout: 9999999H`` / ``99999999H`` (legal: 8 digits, unit hours) reach a
    handler as ~3.6e10 s; passed on as a timeout, grpcio fails at once with
    DEADLINE_EXCEEDED (before the fix: 'Raw' through a meshkit channel). Clamped
    (time_remaining_s, and the propagated current_deadline, which a meshkit channel uses
    when shorter than the given timeout), both hops answer; the next hop sees at most a
    day."""
    from meshkit.resilience import MAX_PROPAGATED_S, time_remaining_s
    from tests.faults._h2 import unary_call

    seen: list[float] = []

    async def leaf(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen.append(context.time_remaining() or -1.0)
        return b"leaf"

    hop2 = meshkit.dial("hop2", registry=registry,
                        options=meshkit.DialOptions(insecure=True, retry=None))

    async def raw(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # what the example order service did: the remaining time as the next timeout
        return await hop2.unary_unary("/hop2/Call")(
            request, timeout=context.time_remaining())

    async def clamped(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # a plain grpcio channel: only the clamp keeps its timeout computable
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s2.port}") as plain:
            reply: bytes = await plain.unary_unary("/hop2/Call")(
                request, timeout=time_remaining_s(context))
            return reply

    async def inherited(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await hop2.unary_unary("/hop2/Call")(request)  # current_deadline()

    def add(_s: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hop1", {
            "Raw": grpc.unary_unary_rpc_method_handler(raw),
            "Clamped": grpc.unary_unary_rpc_method_handler(clamped),
            "Inherited": grpc.unary_unary_rpc_method_handler(inherited),
        }),))

    s1 = meshkit.MeshServer("hop1", [(add, None)], registry=registry,  # deadline on by default
                            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    s2 = meshkit.MeshServer("hop2", [service("hop2", leaf)], registry=registry,
                            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await s1.start()
    await s2.start()
    try:
        await hop2.wait_for_endpoints(1)
        for timeout in ("9999999H", "99999999H"):
            def call(method: str, timeout: str = timeout) -> Any:
                return unary_call("127.0.0.1", s1.port, tls=None, server_name="hop1",
                                  path=f"/hop1/{method}", request=b"x",
                                  headers=[("grpc-timeout", timeout)])

            for method in ("Raw", "Clamped", "Inherited"):
                reply = await call(method)
                assert reply.status == 0, (timeout, method, reply.status, reply.message)
                assert reply.messages == [b"leaf"]
        # grpc-timeout on the wire rounds up (here by about 100 s of a day)
        assert seen and all(0 < s <= MAX_PROPAGATED_S * 1.01 for s in seen), seen
    finally:
        await hop2.close()
        await s1.drain()
        await s2.drain()


async def test_one_deadline_scope_shared_by_tasks_and_nested_restores_each_deadline() -> None:
    """One ``deadline_scope`` object entered by concurrent tasks, and nested in itself:
    each ``with`` puts back its own task's deadline (a single token kept on the object
    made the first task's exit raise ``ValueError`` and left its deadline set)."""
    scope = deadline_scope(time.monotonic() + 5.0)

    async def work(pause_s: float) -> float | None:
        with scope:
            assert current_deadline() is not None
            await asyncio.sleep(pause_s)
        return current_deadline()

    results = await asyncio.wait_for(
        asyncio.gather(work(0.01), work(0.02), return_exceptions=True), 5)
    assert results == [None, None], results
    outer = deadline_scope(time.monotonic() + 9.0)
    with outer:
        before = current_deadline()
        with scope:
            with scope:
                assert current_deadline() != before
            assert current_deadline() != before
        assert current_deadline() == before
    assert current_deadline() is None


async def test_a_far_deadline_scope_is_clamped_and_its_calls_go_through(
    registry: LocalRegistry,
) -> None:
    """A ``deadline_scope`` deadline more than a day ahead (or ``inf``) is clamped to
    ``MAX_PROPAGATED_S`` as a propagated one is (``current_deadline()``'s docstring); it was
    kept as given, and a call made inside it went out as a ~1e10 s timeout, which grpcio
    fails at once with DEADLINE_EXCEEDED, unsent. NaN is no deadline."""
    from meshkit.resilience._deadline import MAX_PROPAGATED_S
    from tests.support.echo import add_echo, method

    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=None))
    await srv.start()
    try:
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, retry=None)) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_unary(method("Unary"))
            for far in (1e10, float("inf")):
                with deadline_scope(time.monotonic() + far):
                    assert await call(b"x") == b"e1|x", far
                    deadline = current_deadline()
                    assert deadline is not None
                    assert deadline - time.monotonic() <= MAX_PROPAGATED_S, far
            with deadline_scope(float("nan")):
                assert current_deadline() is None
                assert await call(b"y") == b"e1|y"
    finally:
        await srv.drain()


class _AnsweringContext:
    """A stand-in handler context: its time left, and the status it was answered with
    (``set_code``/``set_details``, as meshkit answers an unhandled exception)."""

    def __init__(self, remaining_s: float | None) -> None:
        self.remaining_s = remaining_s
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: tuple[tuple[str, str], ...] = (("x-app", "kept"),)

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def time_remaining(self) -> float | None:
        return self.remaining_s

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = code

    def set_details(self, details: str) -> None:
        self.details = details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.trailers

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.trailers = tuple(trailers)


@pytest.mark.parametrize(("remaining_s", "downstream", "answer"), [
    (0.0, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED),
    (0.01, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED),
    (3.0, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN),  # its own timeout
    (None, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN),
    (0.0, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN),
    # a downstream refusal: the interceptor's own rule now, as served (meshkit._unhandled.
    # downstream_refusal; it was server.py's wrap of it, this alone said UNKNOWN)
    (0.0, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
async def test_a_downstream_deadline_that_was_this_calls_own_is_answered_deadline_exceeded(
        remaining_s: float | None, downstream: grpc.StatusCode,
        answer: grpc.StatusCode) -> None:
    """A downstream call's DEADLINE_EXCEEDED that escapes a handler as the call's own
    deadline runs out (it ran under that deadline, propagated) is answered
    DEADLINE_EXCEEDED, not UNKNOWN (a two-hop call on a loaded machine got UNKNOWN when
    the server answered before the caller's own timer fired); with time left, or another
    status, it stays UNKNOWN. Neither leaks the downstream details."""
    from meshkit._unhandled import UnhandledErrorInterceptor

    unhandled = UnhandledErrorInterceptor()._unhandled_for("/hop1/Call")
    exc = grpc.aio.AioRpcError(downstream, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="hop2 at 10.0.0.7:50051 timed out")
    ctx = _AnsweringContext(remaining_s)
    assert await unhandled(exc, ctx) is True
    assert ctx.status is answer
    assert ctx.details and "10.0.0.7" not in ctx.details



async def test_a_nan_timeout_does_not_lift_the_channels_default_deadline(
        registry: LocalRegistry) -> None:
    """``DialOptions(timeout_s=0.5)`` bounds every call of the channel; a caller whose
    computed timeout came out NaN (``budget - elapsed`` with a NaN somewhere) passes
    ``timeout=nan``. grpc.aio fails such a call at once with ``DEADLINE_EXCEEDED``; the
    mesh read it as "no deadline" (``clamp_timeout_s``) instead of the channel's default,
    and the call ran unbounded (the whole 3 s handler; against a hung server, forever).
    Now a NaN timeout is a deadline already passed: ``DEADLINE_EXCEEDED`` at once, as
    grpc.aio, nothing sent."""
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        raw = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as raw_err:
                await asyncio.wait_for(
                    raw.unary_unary(method("Sleep"))(b"3000", timeout=math.nan), 5)
            assert raw_err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            await raw.close()
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, timeout_s=0.5)) as ch:
            await ch.wait_for_endpoints(1)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                await asyncio.wait_for(
                    ch.unary_unary(method("Sleep"))(b"3000", timeout=math.nan), 5)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 0.4
            assert [e.calls for e in ch.stats().endpoints] == [0]
            stream = ch.unary_stream(method("ServerStream"))(b"1", timeout=math.nan)
            with pytest.raises(grpc.RpcError) as err:
                await asyncio.wait_for(stream.read(), 5)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_nan_timeout_with_wait_for_ready_does_not_wait_forever(
        registry: LocalRegistry) -> None:
    """``wait_for_ready=True`` with ``timeout=nan`` and no instance registered: grpc.aio
    answers ``DEADLINE_EXCEEDED`` at once; the mesh dropped the deadline (NaN read as
    none) and the call waited for an endpoint forever, holding the caller. Now it fails
    ``DEADLINE_EXCEEDED`` at once."""
    async with meshkit.dial("nobody", registry=registry,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        call = ch.unary_unary(method("Unary"))(b"x", timeout=math.nan, wait_for_ready=True)
        try:
            async with asyncio.timeout(3):
                with pytest.raises(grpc.RpcError) as err:
                    await call
        except TimeoutError:
            pytest.fail("a call with timeout=nan and wait_for_ready=True still waits "
                        "after 3 s")
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_clamp_timeout_s_reads_nan_as_a_passed_deadline() -> None:
    """``clamp_timeout_s``: ``None`` stays none, NaN is a deadline already passed (0.0),
    ``inf`` and anything past ``MAX_PROPAGATED_S`` are clamped to it."""
    assert clamp_timeout_s(None) is None
    assert clamp_timeout_s(math.nan) == 0.0
    assert clamp_timeout_s(math.inf) == MAX_PROPAGATED_S
    assert clamp_timeout_s(1e12) == MAX_PROPAGATED_S
    assert clamp_timeout_s(1.5) == 1.5
    assert clamp_timeout_s(-1.0) == -1.0


async def test_admission_refusals_eject_no_healthy_endpoint(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """Servers run with ``DeadlineOptions(min_remaining_s=1.0)`` (Finagle's DeadlineFilter)
    and a default ``dial()`` (outlier ejection on); some caller uses a 0.5 s timeout. The
    servers refuse those calls before any of their code runs, as configured. Each refusal
    counted as an outlier-ejection failure of the endpoint that refused
    (``DEADLINE_EXCEEDED`` is a default failure code): after a handful, a healthy
    endpoint was ejected (10 s, doubling on each relapse; up to half the fleet) and the
    channel's other calls were squeezed onto the rest (seen: ``['b']`` ejected after 12).
    The refusal, which says nothing about the endpoint (``OutlierOptions.failure_codes``:
    codes that mean "the endpoint, not the request, is at fault"), now carries
    ``ADMISSION_REFUSAL_METADATA`` and is reported as no endpoint's outcome, as a nack
    is; the caller still gets ``DEADLINE_EXCEEDED`` with the same details."""
    await echo_servers("a", deadline=DeadlineOptions(min_remaining_s=1.0))
    await echo_servers("b", deadline=DeadlineOptions(min_remaining_s=1.0))
    async with asyncio.timeout(30), meshkit.dial(
            "echo", registry=registry, options=meshkit.DialOptions(insecure=True)) as ch:
        await ch.wait_for_endpoints(2)
        unary = ch.unary_unary(method("Unary"))
        assert await unary(b"ok", timeout=5) in (b"a|ok", b"b|ok")
        for _ in range(12):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary(b"short", timeout=0.5)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert err.value.details() == "deadline exceeded before the handler ran"
        endpoints = ch.stats().endpoints
    assert [e.instance_id for e in endpoints if e.ejected] == []
    assert sum(e.failures for e in endpoints) == 0, endpoints


_REFUSED = (("meshkit-deadline-refused", "1"),)


@pytest.mark.parametrize(("remaining_s", "details", "trailers", "answer"), [
    (3.0, "deadline exceeded before the handler ran", _REFUSED,
     grpc.StatusCode.DEADLINE_EXCEEDED),
    (None, "deadline exceeded before the handler ran", _REFUSED,
     grpc.StatusCode.UNKNOWN),  # this call has no deadline: not its to blame
    (3.0, "deadline exceeded before the handler ran", (), grpc.StatusCode.UNKNOWN),
    (3.0, "hop2 at 10.0.0.7:50051 timed out", _REFUSED, grpc.StatusCode.UNKNOWN),
    # a hop further down answered a refusal of the deadline propagated to it
    (3.0, "deadline exceeded (too short for a call the handler made under it)", _REFUSED,
     grpc.StatusCode.DEADLINE_EXCEEDED),
    (3.0, "deadline exceeded (too short for a call the handler made under it)", (),
     grpc.StatusCode.UNKNOWN),
])
async def test_a_downstream_admission_refusal_escaping_is_answered_by_this_calls_deadline(
        remaining_s: float | None, details: str, trailers: tuple[tuple[str, str], ...],
        answer: grpc.StatusCode) -> None:
    """A downstream meshkit server's admission refusal (``DEADLINE_EXCEEDED``, its details
    and the ``meshkit-deadline-refused`` trailer, both) escaping a handler whose call has
    a deadline is answered ``DEADLINE_EXCEEDED`` "deadline exceeded (too short for a call
    the handler made under it)", with time left; with no deadline on this call, or without
    the exact details and trailer, it stays ``UNKNOWN``. Nothing of the downstream's
    answer is passed on."""
    from meshkit._unhandled import UnhandledErrorInterceptor

    unhandled = UnhandledErrorInterceptor()._unhandled_for("/hop1/Call")
    exc = grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                               grpc.aio.Metadata(*trailers), details=details)
    ctx = _AnsweringContext(remaining_s)
    assert await unhandled(exc, ctx) is True
    assert ctx.status is answer
    if answer is grpc.StatusCode.DEADLINE_EXCEEDED:
        assert ctx.details == "deadline exceeded (too short for a call the handler made under it)"
        # the refusal's mark, for the hop above, after the trailers the handler set
        assert ctx.trailers == (("x-app", "kept"), *_REFUSED)
    else:
        assert ctx.details == "Unexpected AioRpcError in the handler (logged by the server)"
        assert ctx.trailers == (("x-app", "kept"),)
    # the same refusal of a mesh channel's call under a timeout of its own: UNKNOWN
    from meshkit._calls import _OWN_DEADLINE

    setattr(exc, _OWN_DEADLINE, True)
    ctx = _AnsweringContext(remaining_s)
    assert await unhandled(exc, ctx) is True
    assert ctx.status is grpc.StatusCode.UNKNOWN


@pytest.mark.timeout(60)
async def test_a_downstream_refusal_of_the_propagated_deadline_is_answered_deadline_exceeded(
        registry: LocalRegistry) -> None:
    """Hop 2 serves with ``DeadlineOptions(min_remaining_s=0.5)``; hop 1's caller gives
    0.3 s, propagated to hop 2, which refuses it before its handler runs
    (``DEADLINE_EXCEEDED`` "deadline exceeded before the handler ran" +
    ``meshkit-deadline-refused``: the request's deadline was short). Hop 1's handler lets
    that escape, and hop 1 answered ``UNKNOWN`` "Unexpected AioRpcError in the handler"
    and counted the call ``Unknown``: a server bug, by the status, where the caller only
    gave too little time. Now the caller is told ``DEADLINE_EXCEEDED`` (details naming no
    downstream, none of hop 2's trailers), hop 1 counts it so and still logs the
    exception. A caller with no deadline, whose call the handler makes with a timeout of
    its own that hop 2 refuses, still gets ``UNKNOWN``: not its deadline."""
    from prometheus_client import CollectorRegistry
    from structlog.testing import capture_logs

    from meshkit.observability import TelemetryOptions
    from tests.support.wait import until

    metrics = CollectorRegistry()
    down = meshkit.dial("hop2", registry=registry, options=meshkit.DialOptions(
        insecure=True, retry=None))

    async def ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"ok"

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call: Any = down.unary_unary("/hop2/Call")
        if request == b"own":  # a timeout of its own, shorter than hop 2 admits
            return await call(b"", timeout=0.3)  # type: ignore[no-any-return]
        return await call(b"")  # type: ignore[no-any-return]

    started: list[meshkit.MeshServer] = []
    try:
        async with asyncio.timeout(30):
            opts: dict[str, Any]
            for name, behaviour, opts in (
                    ("hop2", ok, {"deadline": DeadlineOptions(min_remaining_s=0.5)}),
                    ("hop1", relay, {"telemetry": TelemetryOptions(registry=metrics)})):
                srv = meshkit.MeshServer(name, [service(name, behaviour)], registry=registry,
                                         options=meshkit.ServeOptions(
                                             insecure=True, drain_delay_s=0.0, grace_s=0.5,
                                             **opts))
                await srv.start()
                started.append(srv)
            await down.wait_for_endpoints(1)
            async with meshkit.dial("hop1", registry=registry, options=meshkit.DialOptions(
                    insecure=True, retry=None)) as ch:
                await ch.wait_for_endpoints(1)
                relay_call: Any = ch.unary_unary("/hop1/Call")
                assert await relay_call(b"", timeout=2.0) == b"ok"
                with capture_logs() as logs:
                    with pytest.raises(grpc.aio.AioRpcError) as short:
                        await relay_call(b"", timeout=0.3)
                    with pytest.raises(grpc.aio.AioRpcError) as own:
                        await relay_call(b"own")  # no deadline of the caller's
            assert (short.value.code(), short.value.details()) == (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded (too short for a call the handler made under it)")
            # hop 1's own refusal mark, for a mesh caller (none of hop 2's trailers)
            assert [k for k, _ in short.value.trailing_metadata() or ()
                    if k.startswith("meshkit-")] == ["meshkit-deadline-refused"]
            assert own.value.code() is grpc.StatusCode.UNKNOWN, own.value.details()
            assert started[0].stats().deadline_rejections == 2  # hop 2 refused both
            # the refusal under the caller's deadline is an outcome (debug, no
            # traceback); the one under the handler's own call is the handler's error
            events = [(e["event"], e["log_level"], e["method"]) for e in logs
                      if e["event"] in ("unhandled exception",
                                        "deadline ran out in a call the handler made")]
            assert events == [
                ("deadline ran out in a call the handler made", "debug", "/hop1/Call"),
                ("unhandled exception", "error", "/hop1/Call")]

            def handled(code: str) -> float:
                return sum(s.value for f in metrics.collect() for s in f.samples
                           if s.name == "grpc_server_handled_total"
                           and s.labels.get("grpc_method") == "Call"
                           and s.labels.get("grpc_code") == code)

            await until(lambda: handled("DeadlineExceeded") + handled("Unknown") >= 2,
                        what="hop 1's counts")
            assert (handled("OK"), handled("DeadlineExceeded"), handled("Unknown")) == \
                (1.0, 1.0, 1.0)
    finally:
        await down.close()
        for srv in reversed(started):
            await srv.drain()


async def _relay_chain(registry: LocalRegistry, hops: int, min_remaining_s: float,
                       own_timeout_s: float | None = None) -> tuple[
                           list[meshkit.MeshServer], list[Any]]:
    """Servers ``hop1`` .. ``hop<hops>``: each but the last relays its request to the next
    through a mesh channel (the propagated deadline; ``hop1`` with a timeout of its own,
    ``own_timeout_s``, when given); the last serves with
    ``DeadlineOptions(min_remaining_s=...)`` and answers ``b"ok"``. Returns the servers and
    the relaying channels (index i: hop i+1's channel to hop i+2)."""
    servers: list[meshkit.MeshServer] = []
    channels: list[Any] = []

    async def ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b"ok"

    def relay(n: int) -> Any:
        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            call: Any = channels[n - 1].unary_unary(f"/hop{n + 1}/Call")
            if n == 1 and own_timeout_s is not None:
                return await call(request, timeout=own_timeout_s)  # type: ignore[no-any-return]
            return await call(request)  # type: ignore[no-any-return]
        return behaviour

    for n in range(1, hops):
        channels.append(meshkit.dial(f"hop{n + 1}", registry=registry, options=meshkit.DialOptions(
            insecure=True)))  # retries armed, as dial()'s defaults
    for n in range(hops, 0, -1):
        last = n == hops
        opts: dict[str, Any] = (
            {"deadline": DeadlineOptions(min_remaining_s=min_remaining_s)} if last else {})
        srv = meshkit.MeshServer(
            f"hop{n}", [service(f"hop{n}", ok if last else relay(n))], registry=registry,
            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=0.5, **opts))
        await srv.start()
        servers.append(srv)
    for ch in channels:
        await ch.wait_for_endpoints(1)
    return servers, channels


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hops", [3, 4])
async def test_a_refusal_of_the_propagated_deadline_is_answered_deadline_exceeded_at_every_hop(
        registry: LocalRegistry, hops: int) -> None:
    """A chain hop1 -> hop2 -> hop3 (-> hop4), each relaying with the propagated deadline;
    the last hop serves with ``DeadlineOptions(min_remaining_s=0.5)``. The caller gives
    0.3 s, which the last hop refuses before its handler runs. The hop before it answered
    ``DEADLINE_EXCEEDED`` "too short for a call the handler made under it", but that
    answer carried no mark, so the hop above took it for a failure of its own making and
    answered ``UNKNOWN`` "Unexpected AioRpcError in the handler" (and counted it
    ``Unknown``, and its channel counted the healthy hop below as failed for outlier
    ejection). Now the answer carries the refusal mark (``meshkit-deadline-refused``) and
    every hop up the chain answers ``DEADLINE_EXCEEDED`` the same way, without counting
    the hop below against its endpoint; a call with time enough still goes through."""
    servers, channels = await _relay_chain(registry, hops, 0.5)
    try:
        async with asyncio.timeout(30), meshkit.dial("hop1", registry=registry, options=(
                meshkit.DialOptions(insecure=True, retry=None))) as ch:
            await ch.wait_for_endpoints(1)
            call: Any = ch.unary_unary("/hop1/Call")
            assert await call(b"", timeout=5.0) == b"ok"
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as short:
                    await call(b"", timeout=0.3)
                assert (short.value.code(), short.value.details()) == (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "deadline exceeded (too short for a call the handler made under it)")
            assert servers[0].stats().deadline_rejections == 3  # the last hop refused all
            for channel in [ch, *channels]:
                assert [e.failures for e in channel.stats().endpoints] == [0]
    finally:
        for channel in channels:
            await channel.close()
        for srv in servers:
            await srv.drain()


@pytest.mark.timeout(60)
async def test_a_refusal_of_a_handlers_own_shorter_timeout_is_not_blamed_on_the_caller(
        registry: LocalRegistry) -> None:
    """hop1's handler calls hop2 with a timeout of its own (0.3 s), shorter than hop2's
    ``min_remaining_s`` (0.5), while its caller gave 5 s. hop2 refuses; hop1 answered
    ``DEADLINE_EXCEEDED`` "too short for a call the handler made under it" because its
    call had a deadline, telling the caller its 5 s were too short, where the handler's
    own timeout was. Now the mesh channel marks a refusal of a deadline of the call's own
    (not the propagated one), and hop1 answers ``UNKNOWN``, as for any failure of its own
    making; with the caller's deadline the shorter one, the refusal is still the
    caller's (the test above)."""
    servers, channels = await _relay_chain(registry, 2, 0.5, own_timeout_s=0.3)
    try:
        async with asyncio.timeout(30), meshkit.dial("hop1", registry=registry, options=(
                meshkit.DialOptions(insecure=True, retry=None))) as ch:
            await ch.wait_for_endpoints(1)
            call: Any = ch.unary_unary("/hop1/Call")
            with pytest.raises(grpc.aio.AioRpcError) as own:
                await call(b"", timeout=5.0)
            assert own.value.code() is grpc.StatusCode.UNKNOWN, own.value.details()
            assert own.value.details() == \
                "Unexpected AioRpcError in the handler (logged by the server)"
            assert not [k for k, _ in own.value.trailing_metadata() or ()
                        if k.startswith("meshkit-")]
            # the caller's deadline shorter than the handler's own timeout: the caller's
            with pytest.raises(grpc.aio.AioRpcError) as short:
                await call(b"", timeout=0.2)
            assert short.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert servers[0].stats().deadline_rejections == 2
    finally:
        for channel in channels:
            await channel.close()
        for srv in servers:
            await srv.drain()
