"""A bare HTTP/2 gRPC client: one unary call with headers grpcio will not send.

grpcio's client derives ``grpc-timeout`` from its own deadline and cannot send the longest
legal values (a Python ``timeout`` of 9e9 s fails at once with ``DEADLINE_EXCEEDED``; 1e9 s
reaches the server as about 27000 hours), so a legal header such as
``grpc-timeout: 9999999H`` (the gRPC wire spec allows up to 8 digits and unit ``H``) can
only be sent by hand. :func:`unary_call` opens a TLS connection (ALPN ``h2``, client certificate),
sends one HEADERS frame with the given headers and one DATA frame, and reads the answer:
response messages, headers and trailers (``grpc-status``, ``grpc-message``).

HPACK: requests use literal fields without Huffman coding; answers are decoded with the
static and dynamic tables and the RFC 7541 Huffman code, so any conforming server can
answer.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import urllib.parse
from dataclasses import dataclass, field

from tests.faults._huffman import huffman_decode

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW, _CONT = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY, _ACK = 0x1, 0x4, 0x8, 0x20, 0x1

_STATIC: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)


@dataclass
class Reply:
    """What came back on the stream."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    reset_code: int | None = None

    def _get(self, name: str) -> str | None:
        for k, v in (*self.trailers, *self.headers):
            if k == name:
                return v
        return None

    @property
    def status(self) -> int | None:
        """``grpc-status`` (trailers, or a trailers-only answer), or ``None``."""
        v = self._get("grpc-status")
        return int(v) if v is not None and v.isdigit() else None

    @property
    def message(self) -> str:
        """``grpc-message``, percent-decoded."""
        return urllib.parse.unquote(self._get("grpc-message") or "")


# -- HPACK ------------------------------------------------------------------------------
def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _enc_int(value: int, prefix: int, first: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    huffman = bool(data[pos] & 0x80)
    n, pos = _int(data, pos, 7)
    raw = data[pos:pos + n]
    text = huffman_decode(raw) if huffman else raw
    return text.decode("latin-1"), pos + n


class _Decoder:
    def __init__(self) -> None:
        self.table: list[tuple[str, str]] = []  # newest first

    def _entry(self, index: int) -> tuple[str, str]:
        if index <= len(_STATIC):
            return _STATIC[index - 1]
        return self.table[index - len(_STATIC) - 1]

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        pos = 0
        while pos < len(block):
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = _int(block, pos, 7)
                out.append(self._entry(index))
                continue
            if b & 0xE0 == 0x20:  # dynamic table size update (we keep every entry)
                _, pos = _int(block, pos, 5)
                continue
            indexing = bool(b & 0x40)
            index, pos = _int(block, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = _string(block, pos)
            value, pos = _string(block, pos)
            out.append((name, value))
            if indexing:
                self.table.insert(0, (name, value))
        return out


def _encode(headers: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in headers:
        out += b"\x00"  # literal without indexing, new name, no Huffman
        for s in (name.encode(), value.encode()):
            out += _enc_int(len(s), 7) + s
    return bytes(out)


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


# -- the call ---------------------------------------------------------------------------
async def unary_call(host: str, port: int, *, tls: ssl.SSLContext | None, server_name: str,
                     path: str, request: bytes, headers: list[tuple[str, str]],
                     timeout_s: float = 10.0) -> Reply:
    """One gRPC call on stream 1 of a fresh connection, with ``headers`` as given.

    ``request`` is the serialized message (the 5-byte gRPC prefix is added); ``tls=None``
    speaks plaintext HTTP/2 (prior knowledge). Bounded by ``timeout_s`` (then
    ``TimeoutError``).
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=tls,
                                server_hostname=server_name if tls is not None else None),
        timeout_s)
    try:
        return await asyncio.wait_for(
            _exchange(reader, writer, server_name, path, request, headers), timeout_s)
    finally:
        writer.transport.abort()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    server_name: str, path: str, request: bytes,
                    headers: list[tuple[str, str]]) -> Reply:
    block = _encode([(":method", "POST"), (":scheme", "https"), (":path", path),
                     (":authority", server_name), ("content-type", "application/grpc"),
                     ("te", "trailers"), *headers])
    body = b"\x00" + struct.pack(">I", len(request)) + request
    writer.write(_PREFACE + _frame(_SETTINGS, 0, 0)
                 + _frame(_HEADERS, _END_HEADERS, 1, block)
                 + _frame(_DATA, _END_STREAM, 1, body))
    await writer.drain()
    reply = Reply()
    decoder = _Decoder()
    pending = b""
    data = b""
    seen_headers = False
    ended = False
    while True:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == _SETTINGS and not flags & _ACK:
            writer.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING and not flags & _ACK:
            writer.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _GOAWAY:
            reply.reset_code = int.from_bytes(payload[4:8], "big")
            return reply
        elif stream == 1 and kind == _RST:
            reply.reset_code = int.from_bytes(payload[:4], "big")
            return reply
        elif stream == 1 and kind in (_HEADERS, _CONT):
            if kind == _HEADERS:
                ended = ended or bool(flags & _END_STREAM)
                if flags & _PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & _PRIORITY:
                    payload = payload[5:]
            pending += payload
            if flags & _END_HEADERS:
                fields = decoder.decode(pending)
                pending = b""
                (reply.trailers if seen_headers else reply.headers).extend(fields)
                seen_headers = True
        elif stream == 1 and kind == _DATA:
            ended = ended or bool(flags & _END_STREAM)
            if flags & _PADDED:
                payload = payload[1:len(payload) - payload[0]]
            data += payload
            while len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big"):
                n = int.from_bytes(data[1:5], "big")
                reply.messages.append(data[5:5 + n])
                data = data[5 + n:]
            if payload:
                inc = struct.pack(">I", len(payload))
                writer.write(_frame(_WINDOW, 0, 0, inc) + _frame(_WINDOW, 0, 1, inc))
        if ended and not pending:
            return reply
        await writer.drain()
