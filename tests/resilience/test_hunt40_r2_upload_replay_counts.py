"""Review of c80389ab: an upload whose first attempt never connected, its kept messages
given to the next attempt, is one call of 3 messages in the client's metrics.

c80389ab takes a one-shot request stream (a generator, an async generator, ``write()``)
through ``_UnsentKept``, which keeps the message the attempt that never connected took
and gives it first to the next attempt. Each attempt iterates the stream again, so the
messages' count (``grpc_client_msg_sent_total``) must not count the kept message twice,
and the call is one call (``grpc_client_started_total``/``handled``) whose two attempts
are counted (``meshkit_client_attempts_total``). Same reproduction as
tests/resilience/test_hunt40_l2_upload_never_connected.py: ``a``'s sub-channel read
READY a moment after it died.
"""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions
from tests.resilience.test_hunt40_l2_upload_never_connected import (
    _hold_until_not_ready,
    _PreferA,
    _threaded_handlers,
    _upload,
)
from tests.support.echo import handler, method, raw_server
from tests.support.wait import until
from tests.test_stream_codecs import _sample

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("style", ["async-generator", "generator", "write"])
async def test_a_replayed_upload_counts_each_message_once(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions

    prom = CollectorRegistry()
    telemetry = TelemetryOptions(registry=prom, tracing=False, access_log=False)
    server_a = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server_a.add_generic_rpc_handlers((_threaded_handlers(),))
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    server_a.start()
    try:
        async with raw_server(handler("b")) as (_, port_b):
            for key, port in (("a", port_a), ("b", port_b)):
                await registry.register(
                    Instance(service="echo", instance_id=key, host="127.0.0.1", port=port)
                )
            opts = meshkit.DialOptions(
                insecure=True,
                balancer=_PreferA,
                outlier=None,
                retry=RetryOptions(),
                telemetry=telemetry,
            )
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                assert await ch.unary_unary(method("Unary"))(b"w", timeout=5) == b"a|w"
                a = next(ep for ep in ch.endpoints() if ep.key == "a")
                server_a.stop(None).wait(5)
                sub = ch._conns["a"].channel
                _hold_until_not_ready(sub)
                # the pool's own tracking of a's sub-channel must not hear of the death
                # before the pick (with write(), the attempt starts a loop turn later:
                # uvloop ran the tracker's wake-up first and the call went to b at once,
                # one attempt): it reads READY too until the pick's read
                real_get_state = sub.get_state
                held = [True]

                def held_get_state(try_to_connect: bool = False) -> Any:
                    if held[0]:
                        return grpc.ChannelConnectivity.READY
                    return real_get_state(try_to_connect)

                monkeypatch.setattr(sub, "get_state", held_get_state)
                real = ch._sub_channel_state
                reads = [0]

                def stale(ep: Any) -> Any:
                    reads[0] += 1
                    held[0] = False
                    if ep is a and reads[0] == 1:  # the read made just before it died
                        return grpc.ChannelConnectivity.READY
                    return real(ep)

                monkeypatch.setattr(ch, "_sub_channel_state", stale)
                taken: list[bytes] = []
                assert await asyncio.wait_for(_upload(ch, style, taken), 20) == b"b|x,y,z"
                name = "ClientStream"
                await until(
                    lambda: _sample(prom, "grpc_client_handled_total", grpc_method=name) == 1,
                    timeout_s=10,
                    what="the call counted",
                )
                assert _sample(prom, "grpc_client_started_total", grpc_method=name) == 1
                assert _sample(prom, "meshkit_client_attempts_total", grpc_method=name) == 2
                assert _sample(prom, "grpc_client_msg_sent_total", grpc_method=name) == 3
    finally:
        server_a.stop(None)
