"""A client's cancel of an upload, as the server's handler sees it (grpc.aio, known).

grpc-go's ``Recv`` answers a client's cancel (RST_STREAM) with a ``Canceled`` status and
its half-close with ``io.EOF``; grpc-java calls ``onCancel``, not ``onHalfClose``. grpc.aio
ends a handler's request iterator the same way for both: its core op (receive message)
succeeds with no message on a cancel, and the cancel reaches the handler's task only
later, when ``_handle_cancellation_from_core`` runs (measured here: 0.3-2.4 ms after the
iterator ended; 19 of 20 cancelled uploads ended normally on a raw grpc.aio server, 20 of
20 behind a meshkit server). A handler that commits what it read when the iterator ends
commits a truncated upload, and a relaying handler half-closes its own upstream call,
which the next hop commits. meshkit cannot tell the two apart either (grpc.aio shows
nothing of it; see the README's "Streams" note for the workaround: an explicit last
message). Strict xfail: a grpc.aio that tells a cancel from a half-close makes it pass,
and the suite says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry

_SERVICE = "meshkit.test.Upload"


def _sink(seen: list[str]) -> grpc.GenericRpcHandler:
    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        try:
            async for _ in requests:
                n += 1
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append(f"ended after {n}")  # here a handler would commit n messages
        return b"%d" % n

    return grpc.method_handlers_generic_handler(
        _SERVICE, {"Upload": grpc.stream_unary_rpc_method_handler(upload)})


async def _cancel_uploads(channel: Any, seen: list[str], uploads: int) -> None:
    for _ in range(uploads):
        sent = asyncio.Event()

        async def three_then_wait(sent: asyncio.Event = sent) -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x"
            sent.set()
            await asyncio.sleep(30)  # never half-closes: the client cancels

        before = len(seen)
        call = channel.stream_unary(f"/{_SERVICE}/Upload")(three_then_wait())
        await sent.wait()
        await asyncio.sleep(0.05)  # the three messages read by the handler
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(200):  # the handler's outcome, within 2 s
            if len(seen) > before:
                break
            await asyncio.sleep(0.01)


@pytest.mark.xfail(reason="grpc.aio (1.85) ends a handler's request iterator normally on "
                   "a client's cancel (its receive-message op succeeds with no message; the "
                   "cancel reaches the task later)", strict=True)
@pytest.mark.parametrize("server", ["grpc.aio", "meshkit"])
@pytest.mark.timeout(60)
async def test_a_cancelled_upload_never_reaches_its_handler_as_a_complete_one(
        server: str, registry: LocalRegistry) -> None:
    """Ten uploads of three messages, each cancelled by its client before it half-closes:
    the handler should see each as cancelled (``CancelledError`` from the iterator or its
    task), never as an upload that ended after three messages."""
    seen: list[str] = []
    if server == "grpc.aio":
        raw = grpc.aio.server()
        raw.add_generic_rpc_handlers((_sink(seen),))
        port = raw.add_insecure_port("127.0.0.1:0")
        await raw.start()
        channel: Any = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            async with asyncio.timeout(40):
                await _cancel_uploads(channel, seen, 10)
        finally:
            await channel.close()
            await raw.stop(None)
    else:
        srv = meshkit.MeshServer("upload", [(lambda _s, s: s.add_generic_rpc_handlers(
            (_sink(seen),)), None)], registry=registry, options=meshkit.ServeOptions(
                insecure=True, drain_delay_s=0.0, grace_s=0.5))
        await srv.start()
        try:
            async with asyncio.timeout(40), meshkit.dial(
                    "upload", registry=registry,
                    options=meshkit.DialOptions(insecure=True)) as mesh:
                await mesh.wait_for_endpoints(1)
                await _cancel_uploads(mesh, seen, 10)
        finally:
            await srv.drain()
    assert len(seen) == 10, seen
    assert "ended after 3" not in seen, seen
