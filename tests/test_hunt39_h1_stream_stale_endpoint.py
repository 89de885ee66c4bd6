"""A stream picked onto an endpoint whose connection had just died (its server gone; the
pool's view of it still ``READY``, a moment behind grpc's) was sent to that endpoint's
sub-channel: with ``wait_for_ready`` grpc queued it there for a connection that never
came, so a server stream, an upload and a bidi stream all hung until their deadline (for
ever without one) while another endpoint stood READY; without it the stream failed
``UNAVAILABLE`` "failed to connect to all addresses" at its first read, none of it sent
(a unary call in the same place is picked again: tests/test_hunt37_a9_...). Now a
streaming attempt's pick reads its sub-channel's own connectivity before anything is
sent there: one grpc no longer reads READY takes that state in the pool and the call is
picked again, nothing counted against the stale endpoint."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import pytest

import meshkit
import meshkit._pool
from meshkit.balancer import Done, Endpoint, EndpointState, noop_done
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.support.echo import SERVICE, handler, method, raw_server

pytestmark = pytest.mark.timeout(90)


class _PreferA:
    """Picks ``a`` while it reads READY, else ``b`` (so the stale pick is certain); counts
    the outcomes each endpoint was given."""

    outcomes: dict[str, list[grpc.StatusCode]] = {}

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()
        _PreferA.outcomes = {"a": [], "b": []}

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._eps = tuple(endpoints)

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        for want in ("a", "b"):
            for ep in self._eps:
                if (ep.key == want and ep.state is EndpointState.READY
                        and ep not in exclude):
                    seen = _PreferA.outcomes[want]
                    return ep, lambda code, latency_s, seen=seen: seen.append(code)
        return None


def _threaded_handlers() -> grpc.GenericRpcHandler:
    """The echo methods this test calls, for a server of grpc's threads (answers
    ``a|...``)."""

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"a|%d" % i

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for r in requests:
            yield b"a|" + r

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: b"a|" + r),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(
            lambda rs, c: b"a|" + b",".join(rs)),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi)})


def _hold_until_not_ready(sub: grpc.aio.Channel) -> None:
    """Block the event loop (on purpose: the pool must not hear of it) until grpc's own
    view of sub-channel ``sub`` has left READY (its connection closed), for 5 s at most."""
    held = time.monotonic() + 5
    while sub.get_state() is grpc.ChannelConnectivity.READY and time.monotonic() < held:
        time.sleep(0.01)
    assert sub.get_state() is not grpc.ChannelConnectivity.READY


async def _call(ch: meshkit.MeshChannel, kind: str, wait_for_ready: bool) -> Any:
    if kind == "server-stream":
        call = ch.unary_stream(method("ServerStream"))(b"2", timeout=6,
                                                       wait_for_ready=wait_for_ready)
        return [m async for m in call]
    if kind == "upload":
        return await ch.stream_unary(method("ClientStream"))(
            iter([b"x", b"y"]), timeout=6, wait_for_ready=wait_for_ready)
    call = ch.stream_stream(method("Bidi"))(iter([b"x", b"y"]), timeout=6,
                                            wait_for_ready=wait_for_ready)
    return [m async for m in call]


_EXPECTED = {"server-stream": [b"b|0", b"b|1"], "upload": b"b|x,y",
             "bidi": [b"b|x", b"b|y"]}


@pytest.mark.parametrize("kind", ["server-stream", "upload", "bidi"])
@pytest.mark.parametrize(("wait_for_ready", "retry"), [
    (False, RetryOptions()), (True, RetryOptions()), (True, None)],
    ids=["plain", "wait_for_ready", "wait_for_ready-no-retries"])
async def test_a_stream_picked_onto_an_endpoint_whose_connection_just_died_goes_elsewhere(
        registry: LocalRegistry, kind: str, wait_for_ready: bool,
        retry: RetryOptions | None) -> None:
    """Endpoint ``a``'s server (in threads of its own) stops while the event loop is held,
    so the pool still reads ``a`` READY when the stream is picked: ``b`` answers it
    (before: ``DEADLINE_EXCEEDED`` after the whole 6 s timeout with ``wait_for_ready``,
    ``UNAVAILABLE`` without), and ``a`` is given no outcome for it (nothing was sent)."""
    server_a = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server_a.add_generic_rpc_handlers((_threaded_handlers(),))
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    server_a.start()
    try:
        async with raw_server(handler("b")) as (_, port_b):
            await registry.register(Instance(service="echo", instance_id="a",
                                             host="127.0.0.1", port=port_a))
            await registry.register(Instance(service="echo", instance_id="b",
                                             host="127.0.0.1", port=port_b))
            opts = meshkit.DialOptions(insecure=True, balancer=_PreferA, outlier=None,
                                       retry=retry)
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(2)
                # over a's connection (so it is READY, then dies under the pool)
                assert await ch.unary_unary(method("Unary"))(b"w", timeout=5) == b"a|w"
                a = next(ep for ep in ch.endpoints() if ep.key == "a")
                # the loop held (no await) from here to the pick: the server stops and
                # its connection closes in grpc's threads, unseen by the pool
                server_a.stop(None).wait(5)
                _hold_until_not_ready(ch._conns["a"].channel)
                assert a.state is EndpointState.READY  # the pool's view: a moment behind
                outcomes = _PreferA.outcomes
                del outcomes["a"][:]
                assert await _call(ch, kind, wait_for_ready) == _EXPECTED[kind]
                assert a.state is not EndpointState.READY
                assert a.failures == 0
                # the stale pick settled as no outcome (not a failure of a's)
                assert outcomes["a"] == [grpc.StatusCode.CANCELLED]
    finally:
        server_a.stop(None)


class _PreferSlow:
    """Picks ``slow`` while it is not FAILING (connecting: as a ring hash keeps a key's
    owner while it connects), else ``b``."""

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._eps = tuple(endpoints)

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        for want in ("slow", "b"):
            for ep in self._eps:
                if (ep.key == want and ep.state is not EndpointState.FAILING
                        and ep not in exclude):
                    return ep, noop_done
        return None


@pytest.mark.parametrize("wait_for_ready", [False, True], ids=["plain", "wait_for_ready"])
async def test_a_stream_waiting_on_a_chosen_connecting_endpoint_goes_on_when_it_fails(
        registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
        wait_for_ready: bool) -> None:
    """The balancer keeps choosing ``slow``, whose connection hangs (a listener that never
    answers), over READY ``b``: once the pick's wait for it is capped
    (``_CONNECTING_PICK_MAX_S``, 0.3 s here) the stream was sent on to that sub-channel,
    where it failed ``UNAVAILABLE`` when the connection failed, or with
    ``wait_for_ready`` waited out its whole deadline; it now waits in the mesh and goes
    to ``b`` when ``slow``'s connection fails."""
    monkeypatch.setattr(meshkit._pool, "_CONNECTING_PICK_MAX_S", 0.3)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        async with raw_server(handler("b")) as (_, port_b):
            await registry.register(Instance(service="echo", instance_id="slow",
                                             host="127.0.0.1",
                                             port=listener.getsockname()[1]))
            await registry.register(Instance(service="echo", instance_id="b",
                                             host="127.0.0.1", port=port_b))
            opts = meshkit.DialOptions(insecure=True, balancer=_PreferSlow, outlier=None)
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1)
                for _ in range(100):  # both known (b READY, slow connecting)
                    if len(ch.endpoints()) == 2:
                        break
                    await asyncio.sleep(0.05)

                async def fail_slow() -> None:
                    await asyncio.sleep(1.5)  # past the cap: the stream was sent on
                    listener.close()
                    for s in accepted:
                        s.close()

                failing = asyncio.create_task(fail_slow())
                call = ch.unary_stream(method("ServerStream"))(
                    b"2", timeout=10, wait_for_ready=wait_for_ready)
                assert [m async for m in call] == [b"b|0", b"b|1"]
                await failing
    finally:
        listener.close()
        for s in accepted:
            s.close()
