"""A plain-function handler's request stream that ended with its call does not read as
complete.

grpc.aio reads a request message grpc core failed as the end of the stream: a message
over the server's ``max_receive_message_bytes`` (or a gzip one inflating past it), a
caller that cancelled mid-upload, a deadline that passed mid-upload all ended a
synchronous (``def``) handler's ``for request in request_iterator`` as if the client had
half-closed, and the handler, in its thread, went on to act on a truncated upload as on
the whole one (store it, commit it) while its caller got the error. A synchronous
``grpc.server`` raises ``grpc.RpcError`` from the iterator for the oversized message and
the deadline. Now the iterator raises :class:`meshkit.errors.RequestStreamCutError` (a
``grpc.RpcError``) for each of these, and a stream its client half-closed still ends
cleanly, for client-streaming and bidirectional handlers alike."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry

_SVC = "hunt39.v1.Upload"
_LIMIT = 64 * 1024


class _Seen:
    """What each handler saw at the end of its request stream, by call tag."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ends: dict[str, tuple[str, int]] = {}
        self.events: dict[str, threading.Event] = {}

    def event(self, tag: str) -> threading.Event:
        with self.lock:
            return self.events.setdefault(tag, threading.Event())

    def end(self, tag: str, how: str, n: int) -> None:
        with self.lock:
            self.ends[tag] = (how, n)
        self.event(tag).set()

    async def wait(self, tag: str) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, self.event(tag).wait, 30), tag
        return self.ends[tag]


def _handlers(seen: _Seen) -> dict[str, grpc.RpcMethodHandler]:
    def consume(requests: Iterator[bytes], tag: str) -> int:
        n = 0
        try:
            for _ in requests:
                n += 1
        except grpc.RpcError as exc:
            seen.end(tag, type(exc).__name__, n)
            raise
        seen.end(tag, "complete", n)  # where a handler would store the upload
        return n

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        tag = dict(context.invocation_metadata())["x-tag"]
        return b"%d" % consume(requests, tag)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        tag = dict(context.invocation_metadata())["x-tag"]
        yield b"%d" % consume(requests, tag)

    return {"Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi)}


async def _send(call: Any, messages: list[bytes], then: str) -> None:
    for m in messages:
        await call.write(m)
    if then == "half-close":
        await call.done_writing()
    elif then == "cancel":
        await asyncio.sleep(0.2)  # the first message reached the handler
        call.cancel()
    # "wait": nothing more; the deadline or the server's limit ends the call


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["Upload", "Bidi"])
async def test_a_cut_request_stream_does_not_end_cleanly(registry: LocalRegistry,
                                                         method: str) -> None:
    seen = _Seen()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SVC, _handlers(seen)),))

    srv = meshkit.MeshServer("uploadd", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
                                 limits=meshkit.ServerLimits(
                                     max_receive_message_bytes=_LIMIT)))
    await srv.start()
    kind = "stream_unary" if method == "Upload" else "stream_stream"
    cases = {
        "half-closed": ([b"a", b"b"], "half-close", 30.0),
        "over the limit": ([b"a", b"x" * (_LIMIT + 1)], "wait", 30.0),
        "gzip over the limit": ([b"a", b"\0" * (4 * _LIMIT)], "wait", 30.0),
        "cancelled": ([b"a"], "cancel", 30.0),
        "deadline": ([b"a"], "wait", 1.0),
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for tag, (messages, then, timeout) in cases.items():
                call = getattr(ch, kind)(f"/{_SVC}/{method}")(
                    timeout=timeout, metadata=(("x-tag", tag),),
                    compression=grpc.Compression.Gzip if tag.startswith("gzip") else None)
                await _send(call, messages, then)
                with_error = None
                try:
                    if method == "Upload":
                        await call
                    else:
                        await call.read()
                except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
                    with_error = exc
                how, n = await seen.wait(tag)
                if tag == "half-closed":
                    assert with_error is None and (how, n) == ("complete", 2)
                else:
                    assert with_error is not None, tag
                    assert (how, n) == ("RequestStreamCutError", 1), (tag, how, n)
    finally:
        await srv.drain()
