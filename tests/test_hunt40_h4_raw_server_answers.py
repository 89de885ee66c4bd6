"""What a meshkit client does with a raw HTTP/2 server's answers (h4 hunt: hostile or
broken HTTP/2 peers), served with the ``h2`` library.

* a GOAWAY whose last-stream-id is below the call's stream: the server never processed
  it, and the call is sent again on a new connection (gRFC A6 transparent retry; grpc
  core does it), for each of the four call kinds, with a method the retry policy does not
  call safe to repeat;
* HTTP 429, 502, 503 and 504 without gRPC headers are ``UNAVAILABLE`` (gRPC's HTTP to gRPC
  status mapping), 401 ``UNAUTHENTICATED``, 403 ``PERMISSION_DENIED``, 404
  ``UNIMPLEMENTED`` (sent once more, as a server's refusal of a method it does not serve:
  see tests/test_hunt40_h4_wrong_server_http_404.py); an ``UNAVAILABLE`` so made is
  retried only for a call safe to repeat;
* a trailers-only answer's status and details are the call's; a ``grpc-message`` is
  percent-decoded; a missing ``grpc-status`` is ``UNKNOWN``, a non-integer one
  ``INTERNAL``.

Measured, all held before these tests; they keep it so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import h2.connection
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.raw_h2 import RawServer, goaway, grpc_frame

OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]
Conn = h2.connection.H2Connection


def _answer_ok(conn: Conn, sid: int) -> None:
    conn.send_headers(sid, OK_HEADERS)
    conn.send_data(sid, grpc_frame(b"ok"))
    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)


async def _call(ch: meshkit.MeshChannel, kind: str) -> tuple[str, Any]:
    """One call of ``kind`` on ``/x.Svc/M``: ``("OK", answer)`` or ``(code name, details)``."""

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    try:
        if kind == "unary_unary":
            return "OK", await ch.unary_unary("/x.Svc/M")(b"hi", timeout=10)
        if kind == "unary_stream":
            return "OK", [m async for m in ch.unary_stream("/x.Svc/M")(b"hi", timeout=10)]
        if kind == "stream_unary":
            return "OK", await ch.stream_unary("/x.Svc/M")(requests(), timeout=10)
        return "OK", [m async for m in ch.stream_stream("/x.Svc/M")(requests(), timeout=10)]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()


async def _with_channel(
    tmp_path: Path,
    respond: Callable[..., bool | None],
    run: Callable[[meshkit.MeshChannel, RawServer], Any],
    retry: RetryOptions | None = None,
) -> None:
    async with RawServer(respond) as srv:
        reg = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=30.0, poll_interval_s=0.05))
        await reg.register(
            Instance(service="raw", instance_id="r1", host="127.0.0.1", port=srv.port)
        )
        opts = (
            meshkit.DialOptions(insecure=True)
            if retry is None
            else meshkit.DialOptions(insecure=True, retry=retry)
        )
        ch = meshkit.dial("raw", registry=reg, options=opts)
        try:
            await run(ch, srv)
        finally:
            await ch.close()
            await reg.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
async def test_a_call_above_a_goaways_last_stream_id_is_sent_again(
    kind: str, tmp_path: Path
) -> None:
    state = {"first": True}

    def respond(conn: Conn, sid: int, headers: dict[str, str], body: bytes) -> bool:
        if state["first"]:
            state["first"] = False
            goaway(conn, last_stream_id=0)  # stream 1 never processed
            return True
        _answer_ok(conn, sid)
        return False

    async def run(ch: meshkit.MeshChannel, srv: RawServer) -> None:
        got = await _call(ch, kind)
        assert got == ("OK", [b"ok"] if kind.endswith("_stream") else b"ok"), got
        assert len(srv.requests) == 2

    await _with_channel(tmp_path, respond, run)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("429", "UNAVAILABLE"),
        ("502", "UNAVAILABLE"),
        ("503", "UNAVAILABLE"),
        ("504", "UNAVAILABLE"),
        ("401", "UNAUTHENTICATED"),
        ("403", "PERMISSION_DENIED"),
        ("404", "UNIMPLEMENTED"),
    ],
)
async def test_an_http_status_without_grpc_headers_maps_to_grpcs_code(
    status: str, code: str, tmp_path: Path
) -> None:
    def respond(conn: Conn, sid: int, headers: dict[str, str], body: bytes) -> None:
        conn.send_headers(sid, [(":status", status), ("content-type", "text/plain")])
        conn.send_data(sid, b"busy", end_stream=True)

    async def run(ch: meshkit.MeshChannel, srv: RawServer) -> None:
        got = await _call(ch, "unary_unary")
        assert got[0] == code, got
        # not safe to repeat: no retry; but a 404 (no gRPC server: none of it ran) is
        # sent once more, as a gRPC server's own "Method not found!" is
        assert len(srv.requests) == (2 if status == "404" else 1)

    await _with_channel(tmp_path, respond, run)


@pytest.mark.timeout(60)
async def test_an_http_503_is_retried_for_a_call_safe_to_repeat(tmp_path: Path) -> None:
    seen = {"n": 0}

    def respond(conn: Conn, sid: int, headers: dict[str, str], body: bytes) -> None:
        seen["n"] += 1
        if seen["n"] < 3:
            conn.send_headers(sid, [(":status", "503")], end_stream=True)
        else:
            _answer_ok(conn, sid)

    async def run(ch: meshkit.MeshChannel, srv: RawServer) -> None:
        assert await _call(ch, "unary_unary") == ("OK", b"ok")
        assert len(srv.requests) == 3

    retry = RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=3))
    await _with_channel(tmp_path, respond, run, retry=retry)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("trailers", "want"),
    [
        ([("grpc-status", "14"), ("grpc-message", "down")], ("UNAVAILABLE", "down")),
        (
            [("grpc-status", "3"), ("grpc-message", "caf%C3%A9 %25 %zz")],
            ("INVALID_ARGUMENT", "caf\u00e9 % %zz"),
        ),
        ([], ("UNKNOWN", None)),
        ([("grpc-status", "abc")], ("INTERNAL", None)),
    ],
    ids=["trailers-only", "percent-encoded", "no-status", "status-not-an-integer"],
)
async def test_a_trailers_only_answer(
    trailers: list[tuple[str, str]], want: tuple[str, str | None], tmp_path: Path
) -> None:
    def respond(conn: Conn, sid: int, headers: dict[str, str], body: bytes) -> None:
        conn.send_headers(sid, OK_HEADERS + trailers, end_stream=True)

    async def run(ch: meshkit.MeshChannel, srv: RawServer) -> None:
        code, details = await _call(ch, "unary_unary")
        assert code == want[0], (code, details)
        if want[1] is not None:
            assert details == want[1]
        assert len(srv.requests) == 1

    await _with_channel(tmp_path, respond, run)
