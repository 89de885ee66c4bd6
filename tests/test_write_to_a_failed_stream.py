"""``write()`` to a stream-stream call that has already failed before it opened (no
endpoint could take it: ``UNAVAILABLE``) raises ``asyncio.InvalidStateError`` "RPC already
finished.", as grpc.aio's (``_write``: ``if self.done(): raise
asyncio.InvalidStateError(...)``; its intercepted call's ``write`` too, for an interceptor
that failed with a status), side by side with a raw grpc.aio channel to the same dead
port. meshkit's raised the call's ``UNAVAILABLE`` again at every write, so a writer that
stops at ``InvalidStateError`` (and leaves the status to the reader) raised the status
twice; 56e0b3b made the cancelled call answer so, not the failed one. The first write,
made while the call was still failing, raises the status, as grpc.aio's."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import method


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"AioRpcError {exc.code().name}"
    return f"{type(exc).__name__} {exc}"


async def _outcome(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, 10)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError) as exc:
        return _outcome_of(exc)
    return "no error"


async def _outcomes(ch: Any) -> dict[str, str]:
    out = {}
    written = ch.stream_stream(method("Bidi"))()
    out["first write"] = await _outcome(written.write(b"a"))
    assert written.done()
    out["write after it failed"] = await _outcome(written.write(b"b"))
    read = ch.stream_stream(method("Bidi"))()
    out["first read"] = await _outcome(read.read())
    assert read.done()
    out["write after a failed read"] = await _outcome(read.write(b"b"))
    out["read after that"] = await _outcome(read.read())
    return out


@pytest.mark.parametrize("dial_kw", [pytest.param({}, id="default"),
                                     pytest.param({"retry": None}, id="retry-None")])
async def test_write_to_a_stream_that_failed_before_it_opened(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await registry.register(
        Instance(service="dead", instance_id="d1", host="127.0.0.1", port=port))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as raw, \
            meshkit.dial("dead", registry=registry,
                         options=meshkit.DialOptions(insecure=True, **dial_kw)) as mesh:
        expected = await _outcomes(raw)
        assert expected == {
            "first write": "AioRpcError UNAVAILABLE",
            "write after it failed": "InvalidStateError RPC already finished.",
            "first read": "AioRpcError UNAVAILABLE",
            "write after a failed read": "InvalidStateError RPC already finished.",
            "read after that": "AioRpcError UNAVAILABLE"}
        assert await _outcomes(mesh) == expected
