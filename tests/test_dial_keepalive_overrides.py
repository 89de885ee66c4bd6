"""Client keepalive set through ``DialOptions.channel_options`` and a client keepalive
time faster than servers permit.

``channel_options`` naming gRPC core's keepalive timeout (``grpc.keepalive_timeout_ms``,
GRPC_ARG_KEEPALIVE_TIMEOUT_MS in grpc's doc/keepalive.md) without
``grpc.http2.ping_timeout_ms`` set the timeout grpc core applies to an unanswered
keepalive ping: the channel gives the ping timeout (the one grpc core 1.85 arms,
grpc/grpc#39239) the same value, as ``ServerLimits.channel_args`` does for a server's
``server_options``. A ``keepalive_time_s`` below 10 s is kept (not clamped, unlike grpc-go
and grpc-java) but logged once, as a warning, when the options are built."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.echo import mesh_echo, method
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)

_OVERRIDES = (("grpc.keepalive_time_ms", 500), ("grpc.keepalive_timeout_ms", 500),
              ("grpc.http2.max_pings_without_data", 0))


def test_a_keepalive_timeout_in_channel_options_sets_the_ping_timeout_too() -> None:
    """``grpc.keepalive_timeout_ms`` in ``channel_options`` without
    ``grpc.http2.ping_timeout_ms`` gets a ping timeout of the same value in front of
    them (grpc core kept its 60 s default); an explicit ping timeout wins (nothing
    added); without either nothing is added."""
    opts = meshkit.DialOptions(insecure=True, channel_options=_OVERRIDES)
    assert opts.keepalive_channel_args() == (("grpc.http2.ping_timeout_ms", 500),)
    opts = meshkit.DialOptions(insecure=True, channel_options=(
        *_OVERRIDES, ("grpc.http2.ping_timeout_ms", 700)))
    assert opts.keepalive_channel_args() == ()
    opts = meshkit.DialOptions(insecure=True, channel_options=(
        ("grpc.keepalive_time_ms", 20000),))
    assert opts.keepalive_channel_args() == ()
    # given twice: the first, as grpc core keeps the first value of a repeated argument
    opts = meshkit.DialOptions(insecure=True, channel_options=(
        *_OVERRIDES, ("grpc.keepalive_timeout_ms", 900)))
    assert opts.keepalive_channel_args() == (("grpc.http2.ping_timeout_ms", 500),)


async def test_a_keepalive_timeout_in_channel_options_finds_a_black_holed_server(
        tmp_path: Path) -> None:
    """A client whose ``channel_options`` ping every 0.5 s with
    ``grpc.keepalive_timeout_ms`` = 500 ends a quiet call ``UNAVAILABLE`` about 1 s after
    its server's host vanished (a black hole, no RST; asserted within 8 s): grpc core
    waited its 60 s ping timeout, the call still running."""
    server_reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                            poll_interval_s=0.05))
    reg = LocalRegistry(LocalOptions(path=tmp_path / "client-reg", ttl_s=30.0,
                                     poll_interval_s=0.05))
    limits = meshkit.ServerLimits(min_ping_interval_s=0.2)
    try:
        async with (
            mesh_echo("echo-direct", "e1", server_reg, limits=limits, telemetry=None) as srv,
            TcpProxy("127.0.0.1", srv.port) as proxy,
        ):
            await reg.register(Instance(service="echo", instance_id="p1", host="127.0.0.1",
                                        port=proxy.port))
            opts = meshkit.DialOptions(insecure=True, telemetry=None, retry=None,
                                       outlier=None, channel_options=_OVERRIDES)
            async with meshkit.dial("echo", registry=reg, options=opts) as channel:
                call = channel.unary_unary(method("Sleep"))(b"30000", timeout=60)
                await asyncio.sleep(1.0)  # connected, pinged, the call running
                assert not call.done(), call
                proxy.blackhole()
                t0 = time.monotonic()
                code: Any = None
                try:
                    async with asyncio.timeout(8.0):
                        await call
                except TimeoutError:
                    call.cancel()
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                after_s = time.monotonic() - t0
    finally:
        await reg.close()
    assert code is grpc.StatusCode.UNAVAILABLE, (code, after_s)


def test_a_keepalive_time_below_10_s_is_kept_and_logged_once() -> None:
    """``keepalive_time_s`` below 10 s (the ping interval a meshkit server permits by
    default, the floor grpc-go and grpc-java raise a client's keepalive time to) is
    kept as given and logged once, a warning naming the value and the GOAWAY
    ``too_many_pings`` it draws (measured: keepalive_time_s=1 drew GOAWAYs at 5, 15 and
    35 s, each failing the calls in flight ``UNAVAILABLE``); 10 s and off are quiet."""
    with capture_logs() as logs:
        opts = meshkit.DialOptions(insecure=True, keepalive_time_s=1)
    assert dict(opts.keepalive_channel_args())["grpc.keepalive_time_ms"] == 1000
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    text = " ".join(str(v) for v in warnings[0].values())
    assert "keepalive_time_s=1" in text and "too_many_pings" in text, warnings
    with capture_logs() as logs:
        opts = meshkit.DialOptions(insecure=True, channel_options=(
            ("grpc.keepalive_time_ms", 2000),))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert "2000" in " ".join(str(v) for v in warnings[0].values()), warnings
    with capture_logs() as logs:  # given twice: grpc core keeps the first
        meshkit.DialOptions(insecure=True, channel_options=(
            ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_time_ms", 2000)))
    assert [e for e in logs if e["log_level"] == "warning"] == []
    with capture_logs() as logs:
        meshkit.DialOptions(insecure=True, keepalive_time_s=10)
        meshkit.DialOptions(insecure=True)
        meshkit.DialOptions(insecure=True, channel_options=(
            ("grpc.keepalive_time_ms", 10000),))
    assert [e for e in logs if e["log_level"] == "warning"] == []
