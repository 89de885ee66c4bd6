"""A ``wait_for_ready`` unary call picked onto an endpoint whose connection had just died
(its server gone; the pool's view of it still ``READY``, a moment behind grpc's) was
handed to that endpoint's sub-channel with grpc's own wait-for-ready, where it queued for
a connection that never came: it hung until its deadline (for ever without one) while
another endpoint stood READY, where the same call without ``wait_for_ready`` failed its
connection at once and was sent on to the other endpoint. Now the mesh does the waiting
for a ready endpoint (its pool, as gRPC's picker queues a wait-for-ready call); a
sub-channel that cannot connect sends the call back to be picked again."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from concurrent import futures
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import Done, Endpoint, EndpointState, noop_done
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.support.echo import SERVICE, method, raw_server

pytestmark = pytest.mark.timeout(40)


class _PreferA:
    """Picks ``a`` while it reads READY, else ``b`` (so the stale pick is certain)."""

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._eps = tuple(endpoints)

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        for want in ("a", "b"):
            for ep in self._eps:
                if (ep.key == want and ep.state is EndpointState.READY
                        and ep not in exclude):
                    return ep, noop_done
        for ep in self._eps:
            if ep.state is EndpointState.READY:
                return ep, noop_done
        return None


def _echo(request: bytes, context: Any) -> bytes:
    return request


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_echo)})


def _hold_until_not_ready(sub: grpc.aio.Channel) -> None:
    """Block the event loop (on purpose: the pool must not hear of it) until grpc's own
    view of sub-channel ``sub`` has left READY (its connection closed), for 5 s at most."""
    held = time.monotonic() + 5
    while sub.get_state() is grpc.ChannelConnectivity.READY and time.monotonic() < held:
        time.sleep(0.01)
    assert sub.get_state() is not grpc.ChannelConnectivity.READY


@pytest.mark.parametrize(("wait_for_ready", "retry"), [
    (False, RetryOptions()), (True, RetryOptions()), (True, None)],
    ids=["plain", "wait_for_ready", "wait_for_ready-no-retries"])
async def test_a_call_picked_onto_an_endpoint_whose_connection_just_died_goes_elsewhere(
        registry: LocalRegistry, wait_for_ready: bool, retry: RetryOptions | None) -> None:
    """Endpoint ``a``'s server (in threads of its own) stops while the event loop is held,
    so the pool still reads ``a`` READY when the call is picked: the call is answered by
    ``b`` well within its deadline, with or without ``wait_for_ready`` (which needs no
    retry policy: it is the channel's own waiting, not a retry)."""
    server_a = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server_a.add_generic_rpc_handlers((_handlers(),))
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    server_a.start()
    try:
        async with raw_server(_handlers()) as (_, port_b):
            await registry.register(Instance(service="echo", instance_id="a",
                                             host="127.0.0.1", port=port_a))
            await registry.register(Instance(service="echo", instance_id="b",
                                             host="127.0.0.1", port=port_b))
            opts = meshkit.DialOptions(insecure=True, balancer=_PreferA, outlier=None,
                                       retry=retry)
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(2)
                call = ch.unary_unary(method("Unary"))
                assert await call(b"warm", timeout=5) == b"warm"  # over a's connection
                a = next(ep for ep in ch.endpoints() if ep.key == "a")
                # the loop held (no await) from here to the pick: the server stops and
                # its connection closes in grpc's threads, unseen by the pool
                server_a.stop(None).wait(5)
                _hold_until_not_ready(ch._conns["a"].channel)
                assert a.state is EndpointState.READY  # the pool's view: a moment behind
                t0 = time.monotonic()
                assert await call(b"x", timeout=8, wait_for_ready=wait_for_ready) == b"x"
                assert time.monotonic() - t0 < 4
    finally:
        server_a.stop(None)
