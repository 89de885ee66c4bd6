"""A replica whose own way to the rate-limit storage is broken is still ejected.

0db7bce3 made mesh clients count a fail-closed rate-limit refusal (``UNAVAILABLE`` with
the trailer ``meshkit-ratelimit-unavailable: 1``) against no endpoint, so that an outage
of the storage every replica shares ejects none. But one replica whose *own* path to the
storage fails (a wrong password or URI after a rollout, a network policy, its breaker
stuck open) while its peers reach it refused every limited call fast and was never
ejected: it kept its share of the calls (and, failing fast, P2C's favour) for good, the
black hole outlier ejection exists to close. The channel now tells the two apart
(``meshkit.channel._StorageRefusals``): a refusal while another endpoint refused so too
within the last :data:`meshkit.channel.SHARED_REFUSAL_WINDOW_S` is the shared storage's
(no endpoint's outcome); an endpoint refusing alone while its peers take calls fails on
its own.

Real meshkit servers and a real mesh channel on 127.0.0.1: the broken replica's storage
is a Redis URI of a port nothing listens on, its peers' the in-memory storage.
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions, RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.resilience import RateLimitOptions
from tests.support.echo import method
from tests.test_hunt42_o1_ratelimit_deny_no_ejection import (
    _bidi,
    _client_stream,
    _endpoints,
    _unary,
)

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broken() -> RateLimitOptions:
    return RateLimitOptions(
        default_rule="1000/second", on_storage_error="deny",
        storage_uri=f"async+redis://127.0.0.1:{_closed_port()}", storage_timeout_s=0.5)


def _working() -> RateLimitOptions:
    return RateLimitOptions(default_rule="1000/second", on_storage_error="deny",
                            storage_uri="memory://")


async def _server_stream(ch: Any) -> grpc.StatusCode:
    try:
        async for _ in ch.unary_stream(method("ServerStream"))(b"2", timeout=10):
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


_KINDS = {"unary": _unary, "server_stream": _server_stream,
          "client_stream": _client_stream, "bidi": _bidi}


@pytest.mark.parametrize("kind", list(_KINDS), ids=list(_KINDS))
async def test_a_replica_alone_refusing_for_its_storage_is_ejected(
        registry: LocalRegistry, echo_servers: Any, kind: str) -> None:
    await echo_servers("bad", rate_limit=_broken())
    for name in ("b", "c"):
        await echo_servers(name, rate_limit=_working())
    # round robin: each endpoint takes its share of the calls, whatever its latency
    opts = meshkit.DialOptions(insecure=True, retry=None, balancer=RoundRobin,
                               outlier=OutlierOptions(consecutive_failures=2,
                                                      base_ejection_s=30.0))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = _KINDS[kind]
        codes = [await call(ch) for _ in range(30)]
        seen = await _endpoints(ch)
        # its refusals are its own: ejected, its peers untouched
        assert seen["bad"][1], (seen, codes)
        assert seen["b"] == (0, False) and seen["c"] == (0, False), seen
        # it no longer takes its share of the calls: the last ones all succeed
        assert codes[-10:] == [grpc.StatusCode.OK] * 10, codes
