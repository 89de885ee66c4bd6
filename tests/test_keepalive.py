"""Server keepalive over real sockets: a client that vanishes (a black hole, no RST) or
goes silent after the HTTP/2 handshake is found by ``ServerLimits``' keepalive pings, and
its connection, calls and call slots are freed within ``keepalive_time_s +
keepalive_timeout_s``."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.echo import mesh_echo, method
from tests.support.tcp_proxy import TcpProxy

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _PING, _GOAWAY = 4, 6, 7


def _registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0, poll_interval_s=0.05))


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + struct.pack(">I", stream) + payload)


async def _first_free_slot(port: int, within_s: float) -> float | None:
    """Seconds until a call straight to the server (not through the proxy) is served, or
    ``None`` if every try within ``within_s`` failed (shed ``RESOURCE_EXHAUSTED``)."""
    t0 = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as direct:
        call = direct.unary_unary(method("Unary"))
        while time.monotonic() - t0 < within_s:
            try:
                await call(b"direct", timeout=1.0)
                return time.monotonic() - t0
            except grpc.aio.AioRpcError:
                pass  # shed: the dead client's call still holds the slot
            await asyncio.sleep(0.25)
    return None


async def test_keepalive_timeout_s_bounds_how_long_a_dead_client_holds_its_call_slot(
    tmp_path: Path,
) -> None:
    """``ServerLimits.keepalive_timeout_s`` ("seconds to wait for a ping's ack before
    closing the connection") was set as ``grpc.keepalive_timeout_ms`` only, which grpc
    core (1.85) never arms: an unanswered keepalive ping is timed out by
    ``grpc.http2.ping_timeout_ms`` (default 60 s; grpc/grpc#39239), which meshkit did not
    set. A client whose host vanished (black hole, no RST) while its call ran kept that
    call, its handler and its ``max_concurrent_rpcs`` slot for ``keepalive_time_s`` + 60
    s whatever ``keepalive_timeout_s`` said (measured 61.0 s with both at 1 s). Both are
    now set: the slot is free about keepalive_time_s + keepalive_timeout_s after the black
    hole (both 0.5 s here: asserted within 8 s)."""
    # nothing but the connection's end frees the slot: no eviction, no request timeout
    limits = meshkit.ServerLimits(keepalive_time_s=0.5, keepalive_timeout_s=0.5,
                                  max_concurrent_rpcs=1, evict_waiting_after_s=None,
                                  first_message_timeout_s=None)
    async with (
        mesh_echo("echo", "e1", _registry(tmp_path), limits=limits, telemetry=None) as srv,
        TcpProxy("127.0.0.1", srv.port) as proxy,
        grpc.aio.insecure_channel(proxy.address) as doomed,
    ):
        sleep = doomed.unary_unary(method("Sleep"))
        call = sleep(b"30000", timeout=60)
        # the call holds the only slot once a direct call is shed
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as direct:
            for _ in range(40):
                if call.done():  # a probe took the slot first and the doomed call was shed
                    call = sleep(b"30000", timeout=60)
                    await asyncio.sleep(0.2)
                try:
                    await direct.unary_unary(method("Unary"))(b"probe", timeout=1.0)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the doomed call never took the slot")
        proxy.blackhole()  # the client's host vanishes: no byte, no RST
        freed_after = await _first_free_slot(srv.port, within_s=8.0)
        call.cancel()
    assert freed_after is not None, (
        "a dead client's call still held its slot 8 s after the black hole with "
        "keepalive_time_s=0.5, keepalive_timeout_s=0.5 (expected about 1 s)")


async def test_keepalive_finds_a_dead_client_on_a_connection_without_calls(
    tmp_path: Path,
) -> None:
    """``ServerLimits.keepalive_time_s``: "seconds between the server's keepalive pings on
    an idle transport ..., so dead peers are found". grpc core's server pings only while
    a connection has calls unless ``grpc.keepalive_permit_without_calls`` is set, which
    meshkit did not set: a client that died on a connection without calls was never
    found, its connection held until ``max_connection_idle_s`` (300 s) or, with ``None``,
    for the server's life (connections of vanished clients piled up). A bare HTTP/2 peer
    that completes the handshake and then never acks a PING is now pinged after about
    ``keepalive_time_s`` and its connection closed about ``keepalive_timeout_s`` later
    (asserted within 6 s; before: no PING sent, still open after 6 s)."""
    # 0.5 s each (the closing about 1 s in)
    limits = meshkit.ServerLimits(keepalive_time_s=0.5, keepalive_timeout_s=0.5,
                                  max_connection_idle_s=None)
    async with mesh_echo("echo", "e1", _registry(tmp_path), limits=limits,
                         telemetry=None) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        pings = 0
        closed_after: float | None = None
        try:
            writer.write(_PREFACE + _frame(_SETTINGS, 0, 0))
            await writer.drain()
            acked = False
            t0 = time.monotonic()
            while time.monotonic() - t0 < 6.0:
                try:
                    async with asyncio.timeout(max(0.0, 6.0 - (time.monotonic() - t0))):
                        head = await reader.readexactly(9)
                        payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                except TimeoutError:
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    closed_after = time.monotonic() - t0
                    break
                kind, flags = head[3], head[4]
                del payload
                if kind == _SETTINGS and not flags & 1 and not acked:
                    writer.write(_frame(_SETTINGS, 1, 0))  # the handshake, then silence
                    await writer.drain()
                    acked = True
                elif kind == _PING and not flags & 1:
                    pings += 1  # never acked: this peer is dead from here on
                elif kind == _GOAWAY:
                    closed_after = time.monotonic() - t0
                    break
        finally:
            writer.close()
    assert closed_after is not None, (
        f"a silent peer's connection without calls was still open 6 s in with "
        f"keepalive_time_s=0.5 (keepalive PINGs sent to it: {pings})")


async def _quiet_call(tmp_path: Path, limits: meshkit.ServerLimits, *,
                      black_hole_after_s: float) -> tuple[bool, grpc.StatusCode | None, float]:
    """A meshkit echo server with ``limits`` behind a proxy; :func:`_quiet_call_through`
    it."""
    async with (
        mesh_echo("echo-direct", "e1", _registry(tmp_path), limits=limits,
                  telemetry=None) as srv,
        TcpProxy("127.0.0.1", srv.port) as proxy,
    ):
        return await _quiet_call_through(proxy, tmp_path, black_hole_after_s=black_hole_after_s)


async def _quiet_call_through(proxy: TcpProxy, tmp_path: Path, *, black_hole_after_s: float,
                              ) -> tuple[bool, grpc.StatusCode | None, float]:
    """Dial ``echo`` (found at the proxy) with client keepalive every 0.5 s (0.5 s to
    ack), start a call the server holds 30 s, black-hole the proxy after
    ``black_hole_after_s`` (``inf``: never); (whether the call was still running just
    before the black hole, its status code or ``None`` if it still ran 10 s later,
    seconds from the black hole to its end)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path / "client-reg", ttl_s=30.0,
                                     poll_interval_s=0.05))
    try:
        await reg.register(Instance(service="echo", instance_id="p1", host="127.0.0.1",
                                    port=proxy.port))
        opts = meshkit.DialOptions(insecure=True, telemetry=None, retry=None, outlier=None,
                                   keepalive_time_s=0.5, keepalive_timeout_s=0.5)
        async with meshkit.dial("echo", registry=reg, options=opts) as channel:
            call = channel.unary_unary(method("Sleep"))(b"30000", timeout=60)
            await asyncio.sleep(min(black_hole_after_s, 3.0))
            running = not call.done()
            if black_hole_after_s != float("inf"):
                proxy.blackhole()
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(10.0):
                    await call
            except TimeoutError:
                call.cancel()
                return running, None, time.monotonic() - t0
            except grpc.aio.AioRpcError as exc:
                return running, exc.code(), time.monotonic() - t0
            return running, grpc.StatusCode.OK, time.monotonic() - t0
    finally:
        await reg.close()


async def test_client_keepalive_finds_a_black_holed_server_under_a_quiet_call(
    tmp_path: Path,
) -> None:
    """``DialOptions.keepalive_time_s``/``keepalive_timeout_s`` (gRFC A8): a server whose
    host vanished (black hole, no RST) while a call waited on it was never found by a
    meshkit client, which set no keepalive (and had no option for it): the call waited
    for its deadline, for good without one, and its sub-channel looked READY. With
    keepalive on, the client pings the connection while it has calls, even when no data
    moves on a quiet call (``grpc.http2.max_pings_without_data`` = 0: grpc core stops
    after two pings without data otherwise), and a ping unanswered for
    ``keepalive_timeout_s`` closes it: the call ends ``UNAVAILABLE`` about 1 s after the
    black hole (asserted within 10 s). A meshkit server takes the pings
    (``ServerLimits.min_ping_interval_s``): the call still ran after 2 s of them."""
    running, code, after_s = await _quiet_call(
        tmp_path, meshkit.ServerLimits(min_ping_interval_s=0.2), black_hole_after_s=2.0)
    assert running, "the call ended before the black hole (the server refused the pings?)"
    assert code is grpc.StatusCode.UNAVAILABLE, (code, after_s)


async def test_a_server_refusing_frequent_pings_ends_the_pinging_clients_calls(
    tmp_path: Path,
) -> None:
    """Why ``ServerLimits.min_ping_interval_s`` exists: a server with gRPC's default ping
    policy (pings at most every 5 minutes on a connection sending no data) answers a
    client that pings every 0.5 s with GOAWAY ``too_many_pings``, which ends its calls;
    with ``min_ping_interval_s=0.2`` the same quiet call is answered (the call above)."""
    _running, code, _after = await _quiet_call(
        tmp_path, meshkit.ServerLimits(min_ping_interval_s=300.0),
        black_hole_after_s=float("inf"))
    assert code is grpc.StatusCode.UNAVAILABLE, code


def test_keepalive_options_become_grpc_arguments_and_bad_values_are_refused() -> None:
    """The client's keepalive fields set gRFC A8's arguments on every sub-channel, none
    when off (grpc's default, what ``channel_options`` may then set); the server permits
    pings every ``min_ping_interval_s`` (default 10 s, grpc-go's floor for a client's
    keepalive time). Out-of-range values, and keepalive arguments in ``channel_options``
    beside the fields, are ``ConfigError``s quoting the value."""
    assert meshkit.DialOptions(insecure=True).keepalive_channel_args() == ()
    args = dict(meshkit.DialOptions(insecure=True, keepalive_time_s=30,
                                    keepalive_timeout_s=5).keepalive_channel_args())
    assert args == {"grpc.keepalive_time_ms": 30000, "grpc.keepalive_timeout_ms": 5000,
                    "grpc.http2.ping_timeout_ms": 5000,
                    "grpc.keepalive_permit_without_calls": 0,
                    "grpc.http2.max_pings_without_data": 0}
    args = dict(meshkit.DialOptions(insecure=True, keepalive_time_s=30,
                                    keepalive_without_calls=True).keepalive_channel_args())
    assert args["grpc.keepalive_permit_without_calls"] == 1
    server_args = dict(meshkit.ServerLimits().channel_args())
    assert server_args["grpc.http2.min_ping_interval_without_data_ms"] == 10000
    for bad in ({"keepalive_time_s": 0}, {"keepalive_time_s": float("nan")},
                {"keepalive_time_s": 3e6}, {"keepalive_time_s": "30"},
                {"keepalive_time_s": 30, "keepalive_timeout_s": -1},
                {"keepalive_time_s": 30, "keepalive_without_calls": "yes"},
                {"keepalive_without_calls": True},
                {"keepalive_time_s": 30,
                 "channel_options": [("grpc.keepalive_time_ms", 1000)]}):
        with pytest.raises(meshkit.ConfigError) as err:
            meshkit.DialOptions(insecure=True, **bad)  # type: ignore[arg-type]
        quoted = [repr(v) for v in bad.values()]
        assert any(q in str(err.value) for q in quoted), (bad, str(err.value))
    for bad_s in (-1.0, float("inf"), True, 3e6):
        with pytest.raises(meshkit.ConfigError, match=repr(bad_s)):
            meshkit.ServerLimits(min_ping_interval_s=bad_s)
    # 0: pings at any rate, as grpc reads 0 ms
    assert dict(meshkit.ServerLimits(min_ping_interval_s=0).channel_args())[
        "grpc.http2.min_ping_interval_without_data_ms"] == 0
