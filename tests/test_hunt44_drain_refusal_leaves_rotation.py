"""A draining server's refusal takes its endpoint out of the channel's picking for its
current connection (as a GOAWAY would), until a new connection to that address is READY.

What was wrong: a meshkit client reported a draining refusal (``UNAVAILABLE`` "server
draining" with ``meshkit-nack: 1``) to the balancer as one more ``UNAVAILABLE`` and went
on picking the endpoint. P2C's failure penalty (0.25 s of latency) is less than a loaded
endpoint's cost, and the outlier ejection cap may forbid ejecting it, so the draining
server kept being sent calls through its refusal phase; when that phase hit its cap the
stop cancelled the calls grpc had accepted but not handed to Python (``CANCELLED``, no
retry: tests/test_server.py::test_calls_racing_a_drained_server_stop_are_refused_with_a_
nack_not_cancelled failed under load)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
import meshkit.server
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from meshkit.resilience._retry import DRAINING_DETAILS, NACK_METADATA
from tests.support.echo import SERVICE, add_echo, method

_DELAY_S = 0.3  # each server's answer time: more than P2C's 0.25 s failure penalty


class _FrozenView:
    """A registry view that never changes after its first answer: the client never
    learns of the deregistration (an unreachable registry, a slow watch)."""

    def __init__(self, instances: frozenset[Instance]) -> None:
        self._instances = instances

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        yield self._instances
        await asyncio.Event().wait()


async def _serve(registry: LocalRegistry, iid: str, tag: str,
                 port: int = 0) -> meshkit.MeshServer:
    srv = meshkit.MeshServer("echo", [add_echo(tag, delay_s=_DELAY_S)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id=iid, admin=None, port=port,
                                 drain_delay_s=0.1, grace_s=5))
    await srv.start()
    return srv


async def test_a_draining_refusal_takes_the_endpoint_out_until_it_reconnects(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After server x's first draining refusal, the P2C channel sends x no further call
    (x's ``drain_refused`` stays 1 over the next 8 calls, whose picks P2C would have
    given x two times in three: its penalty is below the others' 0.3 s latency), while
    the other two endpoints are READY; and a server restarted at x's address (same
    instance id) is picked again once its new connection is READY. Outlier ejection is
    off, so nothing but the refusal's effect keeps x out."""
    # the refusal phase stays open while refusals come (quiet 3 s: longer than the 8
    # calls below; at most 20 s)
    monkeypatch.setattr(meshkit.server, "_REFUSE_QUIET_S", 3.0)
    monkeypatch.setattr(meshkit.server, "_REFUSE_MAX_S", 20.0)
    servers = {iid: await _serve(registry, iid, iid) for iid in ("x", "y", "z")}
    drain: asyncio.Task[None] | None = None
    try:
        view = _FrozenView(frozenset(s.instance for s in servers.values()
                                     if s.instance is not None))
        opts = meshkit.DialOptions(insecure=True, outlier=None, retry=RetryOptions(
            methods={method("Unary"): RetryPolicy(idempotent=True)}))
        async with meshkit.dial("echo", registry=view, options=opts) as ch:
            await ch.wait_for_endpoints(3, timeout_s=10)
            unary = ch.unary_unary(method("Unary"))
            x = servers.pop("x")
            x_port = x.port
            for _ in range(6):  # every endpoint's latency known: ~0.3 s each
                await asyncio.wait_for(unary(b"w", timeout=5), 10)
            drain = asyncio.create_task(x.drain())
            end = time.monotonic() + 15
            while x.drain_refused == 0:  # the refusal phase's first refusal (retried)
                assert time.monotonic() < end, "x never refused a call"
                await asyncio.wait_for(unary(b"a", timeout=5), 10)
            for _ in range(8):
                await asyncio.wait_for(unary(b"b", timeout=5), 10)
            assert x.drain_refused == 1, (
                f"x refused {x.drain_refused} calls: it stayed in rotation while draining")
            await asyncio.wait_for(drain, 25)
            drain = None
            # a server restarted at x's address under x's instance id: picked again
            servers["x"] = await _serve(registry, "x", "xnew", port=x_port)
            end = time.monotonic() + 20
            while not (await asyncio.wait_for(unary(b"c", timeout=5), 10)).startswith(
                    b"xnew|"):
                assert time.monotonic() < end, "the restarted x was never picked"
    finally:
        if drain is not None:
            await asyncio.wait_for(drain, 25)
        await asyncio.wait_for(asyncio.gather(*(s.drain() for s in servers.values())), 25)


@pytest.mark.parametrize("kind", ["client_stream", "server_stream"],
                         ids=["client_stream", "server_stream"])
async def test_a_streaming_draining_refusal_takes_the_endpoint_out(kind: str) -> None:
    """A draining refusal of a stream-unary call (the upload path) or of a response
    stream (the stream outcome path; a meshkit server serves those while it drains, a
    server of another make may refuse them so) also takes the endpoint out of picking:
    the channel's only endpoint refused once goes ``TRANSIENT_FAILURE``, and the next
    calls are not sent to it (the server counts one call in all). The server here is a
    plain grpc.aio one answering every call as a draining meshkit server does."""
    calls: list[str] = []
    trailer = (NACK_METADATA,)

    async def refuse_upload(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        calls.append("upload")
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS, trailer)
        return b""

    async def refuse_stream(request: bytes,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        calls.append("stream")
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS, trailer)
        yield b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "ClientStream": grpc.stream_unary_rpc_method_handler(refuse_upload),
        "ServerStream": grpc.unary_stream_rpc_method_handler(refuse_stream),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        view = _FrozenView(frozenset({Instance(service="echo", instance_id="d",
                                               host="127.0.0.1", port=port)}))
        opts = meshkit.DialOptions(insecure=True, outlier=None)
        async with meshkit.dial("echo", registry=view, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)

            async def one() -> None:
                if kind == "client_stream":
                    await ch.stream_unary(method("ClientStream"))([b"a", b"b"], timeout=5)
                else:
                    async for _ in ch.unary_stream(method("ServerStream"))(b"x", timeout=5):
                        pass

            with pytest.raises(grpc.aio.AioRpcError) as first:
                await asyncio.wait_for(one(), 10)
            assert first.value.code() is grpc.StatusCode.UNAVAILABLE
            assert calls == ["upload" if kind == "client_stream" else "stream"]
            end = time.monotonic() + 5
            while ch.get_state() is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                assert time.monotonic() < end, (
                    f"the refusing endpoint stayed in rotation ({ch.get_state()})")
                await asyncio.sleep(0.02)
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as later:
                    await asyncio.wait_for(one(), 10)
                assert later.value.code() is grpc.StatusCode.UNAVAILABLE
            assert len(calls) == 1, calls
    finally:
        await server.stop(None)
