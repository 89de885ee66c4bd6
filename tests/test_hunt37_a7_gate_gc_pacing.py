"""The request gate's garbage collection after large requests is paced by its own cost,
and an aborted or cancelled call's request is freed without it.

What a user saw: ``ServerLimits.gc_after_request_bytes`` (16 MiB by default) ran a full
``gc.collect()`` on the event loop each time 16 MiB of large (>= 1 MiB) requests had been
served, whatever that collection cost. Its cost grows with the application's heap, not
with the requests: in a server holding an in-memory cache of a million small objects
one collection stalled the loop about 0.5 s (every call, health probe and keepalive
with it), so 64 uploads of 1 MiB took 2.8 s instead of 0.45 s (four collections), the
loop frozen most of that time. Now a collection that falls due sooner than 19 times the
previous one's duration after it is put off to then (one timer): the collector takes at
most about 5 % of the loop's time, and the garbage of the last requests is still
collected. And the collections are needed less: an aborted or cancelled call's request
was kept alive, through its exception's traceback (every frame of the handler chain) in a
reference cycle, until the collector ran; the gate now drops that traceback, which
nothing reads after it, as the call leaves (a flood of 200 aborted 3.9 MB requests:
peak growth +77..+93 MiB instead of +116..+127).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.wait import until

_MIB = 1 << 20
_GC_AFTER = 4 * _MIB  # gc_after_request_bytes here (16 MiB by default)
_CACHE = 50_000  # objects in the application's cache


def _add_upload(_servicer: object, server: Any) -> None:
    async def upload(request: bytes, context: object) -> bytes:
        return b"%d" % len(request)

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Upload", {"Put": grpc.unary_unary_rpc_method_handler(upload)}),))


async def test_collections_after_large_requests_take_a_bounded_share_of_the_loop(
    registry: LocalRegistry,
) -> None:
    """With a heap whose full collection takes about a tenth of a second, 16 uploads of
    1 MiB (four times gc_after_request_bytes, 4 MiB here) run one collection, not four;
    the collection put off runs once its pause has passed, and the gate's timer goes with
    the server."""
    # an application's in-memory cache; kept small (and gc_after_request_bytes with it)
    # as the wait for the collection put off is 19 times one collection's duration
    cache = [{"k": [i]} for i in range(_CACHE)]
    srv = meshkit.MeshServer("upload", [(_add_upload, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 limits=meshkit.ServerLimits(
                                     gc_after_request_bytes=_GC_AFTER)))
    await srv.start()
    try:
        gate = srv.gate
        assert gate is not None
        t0 = time.monotonic()
        gc.collect()
        one = time.monotonic() - t0  # what one full collection costs with this heap
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            put: Any = ch.unary_unary("/test.Upload/Put")
            t0 = time.monotonic()
            for _ in range(4 * _GC_AFTER // _MIB):
                assert await put(b"x" * _MIB, timeout=60) == b"%d" % _MIB
            took = time.monotonic() - t0
        # before: one collection per gc_after_request_bytes, 4 (most of the time taken);
        # now the first, and the next only after 19 times its duration
        assert gate.collections <= 1 + took / (10 * one), (gate.collections, took, one)
        assert gate.collections >= 1
        # the garbage of the requests after it is collected all the same, later
        await until(lambda: gate.collections >= 2,
                    timeout_s=max(0.0, gate._gc_next - time.monotonic()) + 10,
                    what="the collection put off")
    finally:
        await srv.drain()
        del cache
    assert gate._gc_timer is None  # nothing left on the loop


class _Request:
    """A request object a weak reference can follow (bytes cannot)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


async def test_an_aborted_or_cancelled_calls_request_is_freed_as_it_ends(
    registry: LocalRegistry,
) -> None:
    """With the cyclic collector off, the request of a call its handler aborted (also one
    whose handler raised, answered UNKNOWN) or whose caller's deadline ended it is freed
    when the call ends, not kept by a cycle through the exception's traceback."""
    requests: list[weakref.ref[_Request]] = []

    async def fail(request: _Request, context: Any) -> bytes:
        requests.append(weakref.ref(request))
        if request.data == b"abort":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rejected")
        if request.data == b"raise":
            raise ValueError("no")
        await asyncio.sleep(30)  # b"wait": the caller's deadline ends it
        return b""

    def add(_servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Fail", {"Call": grpc.unary_unary_rpc_method_handler(
                fail, request_deserializer=_Request)}),))

    srv = meshkit.MeshServer("fail", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          admin=None))
    await srv.start()
    gc.disable()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call: Any = ch.unary_unary("/test.Fail/Call")
            for data, code in ((b"abort", grpc.StatusCode.INVALID_ARGUMENT),
                               (b"raise", grpc.StatusCode.UNKNOWN),
                               (b"wait", grpc.StatusCode.DEADLINE_EXCEEDED)):
                try:
                    await call(data, timeout=0.5 if data == b"wait" else 10)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() is code, (data, exc)
                else:
                    raise AssertionError(data)
                await until(lambda: requests[-1]() is None, timeout_s=5,
                            what=f"the {data!r} call's request freed")
    finally:
        gc.enable()
        await srv.drain()
