"""A raw HTTP/2 peer (the ``h2`` library) for what a gRPC library will not send or answer.

:func:`unary_call` is a client that sends one request stream with any headers (pseudo-
headers twice, upper-case names, control characters in values) and any body bytes (a
length prefix that lies, a compressed flag without an encoding), and reads what comes
back. :class:`RawServer` is a server answering every request stream with a function of
the test's (trailers-only answers, a missing or non-integer ``grpc-status``, HTTP 503
without gRPC headers, GOAWAY). Loopback and plaintext only; every read has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

Headers = Sequence[tuple[str, str]]


def grpc_frame(message: bytes, *, compressed: int = 0, length: int | None = None) -> bytes:
    """``message`` with gRPC's 5-byte prefix: the compressed flag, then ``length``
    (default the message's own) as a big-endian 32-bit integer."""
    return struct.pack(">BI", compressed, len(message) if length is None else length) + message


def request_headers(path: str, extra: Headers = ()) -> list[tuple[str, str]]:
    """A gRPC request's headers for ``path`` (POST, http, ``te: trailers``,
    ``content-type: application/grpc``), then ``extra``."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        *extra,
    ]


@dataclass
class Reply:
    """What came back on a request stream."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""
    reset_code: int | None = None

    def get(self, name: str) -> str | None:
        """The last value of ``name`` in the trailers, else in the headers."""
        for k, v in (*reversed(self.trailers), *reversed(self.headers)):
            if k == name:
                return v
        return None


async def unary_call(port: int, headers: Headers, body: bytes, *, timeout_s: float = 10.0) -> Reply:
    """Send one request stream (``headers``, then ``body`` with END_STREAM) to
    ``127.0.0.1:port`` and read its answer until the stream ends or is reset.

    Raises:
        TimeoutError: no end of the stream within ``timeout_s``.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, list(headers), end_stream=not body)
    if body:
        conn.send_data(sid, body, end_stream=True)
    writer.write(conn.data_to_send())
    reply = Reply()

    async def read() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    reply.headers = [(str(k), str(v)) for k, v in ev.headers]
                elif isinstance(ev, h2.events.TrailersReceived):
                    reply.trailers = [(str(k), str(v)) for k, v in ev.headers]
                elif isinstance(ev, h2.events.DataReceived):
                    reply.data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    reply.reset_code = int(ev.error_code)
                    return
                elif isinstance(ev, h2.events.StreamEnded):
                    return
            writer.write(conn.data_to_send())

    try:
        await asyncio.wait_for(read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), 5.0)
    return reply


Respond = Callable[[h2.connection.H2Connection, int, dict[str, str], bytes], bool | None]
"""``(connection, stream id, request headers, request body)``: answers the stream with the
connection's ``send_*`` methods (the server sends what they queued); a true result closes
the connection once that is sent (after a GOAWAY, say: :func:`goaway`)."""


def goaway(conn: h2.connection.H2Connection, last_stream_id: int, error_code: int = 0) -> None:
    """Queue a GOAWAY frame on ``conn`` without moving h2's state machine to CLOSED (h2's
    ``close_connection`` does, after which it sends nothing more on the streams at or
    below ``last_stream_id`` that the frame lets finish)."""
    payload = struct.pack(">II", last_stream_id & 0x7FFFFFFF, error_code)
    conn._data_to_send += struct.pack(">I", len(payload))[1:] + bytes([7, 0]) + b"\0" * 4 + payload


class RawServer:
    """A raw HTTP/2 server on ``127.0.0.1``: each request stream, once its client ended it,
    is answered by ``respond``; :attr:`requests` holds every request's headers and body."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        close = False
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = (
                            {str(k): str(v) for k, v in ev.headers},
                            bytearray(),
                        )
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id][1].extend(ev.data)
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        headers, body = streams.pop(ev.stream_id)
                        self.requests.append((headers, bytes(body)))
                        if self.respond(conn, ev.stream_id, headers, bytes(body)):
                            close = True
                writer.write(conn.data_to_send())
                await writer.drain()
                if close:
                    return
        except (OSError, h2.exceptions.ProtocolError):
            pass  # the client left, or broke the protocol after this server's GOAWAY
        finally:
            self._writers.discard(writer)
            writer.close()
