"""A call to a server's plain-function (``def``) handler when no handler thread can start
at all (``RuntimeError: can't start new thread``: a container's ``pids.max``, a user's
``RLIMIT_NPROC``, memory for another stack) and none of the pool runs yet.

Since 351576bc nothing is queued then (the handler never runs later), but the call was
answered ``UNKNOWN`` "Unexpected RuntimeError in the handler (logged by the server)": a
status that says the handler failed, which no client retries (not even a meshkit one,
for a method not safe to repeat), although none of the handler ran. It is now refused
as the request gate sheds a call none of whose code ran: ``RESOURCE_EXHAUSTED`` "server
busy" with the nack trailer (``meshkit-nack: 1``), so a meshkit client retries it on
another endpoint; the server warns once until a thread starts again. A handler's own
``RuntimeError`` (the same text, from a thread it starts itself) is still ``UNKNOWN``.

Real ``grpc.aio`` servers and calls on 127.0.0.1, a real ``meshkit.dial`` channel; the
failing start is the one thing injected, as in
tests/test_hunt42_lifecycle_handler_thread_start_fails.py (``threading.Thread.start``
raising as CPython's does, for the handler threads of the servers named).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit._threads import HandlerThreads
from meshkit.discovery import LocalRegistry
from meshkit.server import ServerLimits

pytestmark = pytest.mark.timeout(60)

_SERVICE = "hunt42.r.NoThread"
_PREFIX = f"meshkit-handler-{_SERVICE}"
_WAIT_S = 8.0  # a call's bound (each takes milliseconds)
_NACK = ("meshkit-nack", "1")


class _StartLimit:
    """Makes each start of a handler thread of a refusing pool fail as CPython's
    ``Thread.start`` does when ``pthread_create`` fails; ``pools``: the pools refusing
    (``None``: all of them)."""

    def __init__(self) -> None:
        self.refusing = True
        self.pools: list[HandlerThreads] | None = None
        self.refused = 0


@pytest.fixture
def start_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[_StartLimit]:
    limit = _StartLimit()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX) and limit.refusing:
            pool = getattr(getattr(thread, "_target", None), "__self__", None)
            if limit.pools is None or any(pool is p for p in limit.pools):
                limit.refused += 1
                raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield limit


def _handlers(ran: list[bytes], name: bytes) -> grpc.GenericRpcHandler:
    def work(request: bytes, context: Any) -> bytes:
        ran.append(request)
        if request == b"own-thread":  # the handler's own thread start failing
            raise RuntimeError("can't start new thread")
        return name + b":" + request

    def down(request: bytes, context: Any) -> Iterator[bytes]:
        ran.append(request)
        yield b"first:" + request
        yield b"last:" + request

    def both(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for request in requests:
            ran.append(request)
            yield b"echo:" + request

    return grpc.method_handlers_generic_handler(
        _SERVICE, {"Work": grpc.unary_unary_rpc_method_handler(work),
                   "Down": grpc.unary_stream_rpc_method_handler(down),
                   "Both": grpc.stream_stream_rpc_method_handler(both)})


def _servicer(ran: list[bytes], name: bytes = b"done") -> tuple[Any, Any]:
    return (lambda handler, server: server.add_generic_rpc_handlers((handler,)),
            _handlers(ran, name))


def _server(registry: LocalRegistry, ran: list[bytes], name: bytes = b"done",
            instance_id: str | None = None, **extra: Any) -> meshkit.MeshServer:
    return meshkit.MeshServer(
        _SERVICE, [_servicer(ran, name)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, port=0, drain_delay_s=0.0,
                                     grace_s=1.0, handler_threads=4,
                                     instance_id=instance_id, **extra))


async def _until(what: Any) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + _WAIT_S
    while not what():
        assert loop.time() < end, "not within the bound"
        await asyncio.sleep(0.01)


async def _call(channel: grpc.aio.Channel, method: str, tag: bytes) -> Any:
    if method == "Work":
        return await channel.unary_unary(f"/{_SERVICE}/Work")(tag, timeout=_WAIT_S)
    if method == "Down":
        call = channel.unary_stream(f"/{_SERVICE}/Down")(tag, timeout=_WAIT_S)
        return [m async for m in call]
    both = channel.stream_stream(f"/{_SERVICE}/Both")(iter([tag]), timeout=_WAIT_S)
    return [m async for m in both]


def _answer(method: str, tag: bytes) -> Any:
    return (b"done:" + tag if method == "Work"
            else [b"first:" + tag, b"last:" + tag] if method == "Down"
            else [b"echo:" + tag])


@pytest.mark.parametrize("method", ["Work", "Down", "Both"])
async def test_a_call_no_thread_can_run_is_shed_with_the_nack(
        registry: LocalRegistry, start_limit: _StartLimit, method: str) -> None:
    ran: list[bytes] = []
    server = _server(registry, ran)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with capture_logs() as logs:
                for tag in (b"a", b"b"):
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await _call(channel, method, tag)
                    assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, \
                        (failed.value.code(), failed.value.details())
                    assert failed.value.details() == "server busy"
                    assert _NACK in tuple(failed.value.trailing_metadata() or ())
            assert start_limit.refused == 2
            assert ran == []
            warned = [e for e in logs if e["event"].startswith("could not start")]
            assert len(warned) == 1 and warned[0]["log_level"] == "warning", logs
            assert "can't start new thread" in warned[0]["error"]
            assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
            start_limit.refusing = False  # threads can start again
            assert await _call(channel, method, b"later") == _answer(method, b"later")
            await asyncio.sleep(0.2)  # (a refused call's work, if queued, ran by now)
            assert ran == [b"later"]
    finally:
        await server.drain()


@pytest.mark.parametrize("read_requests", [True, False], ids=["gate", "call-slots"])
@pytest.mark.parametrize("method", ["Work", "Down"])
async def test_a_refused_call_gives_back_its_call_slot(
        registry: LocalRegistry, start_limit: _StartLimit, method: str,
        read_requests: bool) -> None:
    ran: list[bytes] = []
    server = _server(registry, ran, limits=ServerLimits(
        max_concurrent_rpcs=2, read_requests=read_requests))
    await server.start()
    slots = server.gate if read_requests else server.call_slots
    assert slots is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            for tag in (b"a", b"b", b"c"):  # more than the slots
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await _call(channel, method, tag)
                assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            await _until(lambda: slots.calls() == 0)
            start_limit.refusing = False
            assert await _call(channel, method, b"later") == _answer(method, b"later")
            await _until(lambda: slots.calls() == 0)
            assert ran == [b"later"]
    finally:
        await server.drain()


async def test_a_meshkit_client_retries_the_refused_call_on_another_endpoint(
        registry: LocalRegistry, start_limit: _StartLimit) -> None:
    ran_stuck: list[bytes] = []
    ran_fine: list[bytes] = []
    stuck = _server(registry, ran_stuck, b"stuck", "stuck")
    fine = _server(registry, ran_fine, b"fine", "fine")
    await stuck.start()
    await fine.start()
    try:
        stuck_pool = stuck._handler_threads
        assert stuck_pool is not None
        start_limit.pools = [stuck_pool]
        async with meshkit.dial(_SERVICE, registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as channel:
            work = channel.unary_unary(f"/{_SERVICE}/Work")
            answers = [await work(b"%d" % i, timeout=_WAIT_S) for i in range(8)]
        assert answers == [b"fine:%d" % i for i in range(8)]
        assert start_limit.refused >= 1, "no call reached the stuck endpoint"
        assert ran_stuck == []
    finally:
        await stuck.drain()
        await fine.drain()


async def test_a_handlers_own_runtime_error_is_still_unknown(
        registry: LocalRegistry, start_limit: _StartLimit) -> None:
    ran: list[bytes] = []
    start_limit.refusing = False
    server = _server(registry, ran)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _call(channel, "Work", b"own-thread")
        assert failed.value.code() is grpc.StatusCode.UNKNOWN
        assert failed.value.details() == \
            "Unexpected RuntimeError in the handler (logged by the server)"
        assert _NACK not in tuple(failed.value.trailing_metadata() or ())
        assert ran == [b"own-thread"]
    finally:
        await server.drain()


def test_the_pool_raises_its_own_error_when_no_thread_starts(
        start_limit: _StartLimit) -> None:
    from meshkit._threads import NoHandlerThread

    pool = HandlerThreads(2, _PREFIX)
    try:
        with pytest.raises(NoHandlerThread, match="can't start new thread") as raised:
            pool.submit(print, "refused")
        assert isinstance(raised.value, RuntimeError)  # the documented contract holds
        start_limit.refusing = False
        assert pool.submit(int, "7").result(_WAIT_S) == 7
    finally:
        pool.shutdown(wait=True)
