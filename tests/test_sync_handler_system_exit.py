"""A plain-function handler's ``SystemExit`` fails its call, not the whole server.

A plain-function handler runs in a thread, where ``SystemExit`` (``sys.exit()`` in code
ported from a command-line tool, ``argparse`` refusing arguments taken from a request)
ends only that thread. Carried back to the event loop as the handler's result, it was
raised in the call's task, where asyncio lets it stop the loop: one bad request ended
the server's process (``asyncio.run`` raised ``SystemExit``), every call of every server
in it lost. It is now answered as any unhandled exception of the handler,
:class:`meshkit._handlers.EscapedSystemExit` (``UNKNOWN``), for a unary handler and a
response stream alike, and the server serves on."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry


def _parsed(request: bytes, context: Any) -> bytes:
    parser = argparse.ArgumentParser(prog="job", exit_on_error=True)
    parser.add_argument("--n", type=int)
    parser.print_usage = lambda file=None: None  # type: ignore[method-assign]
    parser.exit = lambda status=0, message=None: sys.exit(status)  # type: ignore[method-assign]
    return str(parser.parse_args(request.decode().split()).n).encode()


def _stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield b"first"
    sys.exit(3)


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Exit", {
        "Parsed": grpc.unary_unary_rpc_method_handler(_parsed),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream)}),))


@pytest.mark.timeout(60)
async def test_a_plain_handlers_system_exit_is_answered_and_the_server_serves_on(
    registry: LocalRegistry,
) -> None:
    srv = meshkit.MeshServer("exitd", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            parsed = ch.unary_unary("/t.Exit/Parsed")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await parsed(b"--n x", timeout=5)
            assert err.value.code() is grpc.StatusCode.UNKNOWN, err.value
            assert "EscapedSystemExit" in (err.value.details() or "")
            got: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for m in ch.unary_stream("/t.Exit/Stream")(b"x", timeout=5):
                    got.append(m)
            assert got == [b"first"]
            assert err.value.code() is grpc.StatusCode.UNKNOWN, err.value
            assert await parsed(b"--n 4", timeout=5) == b"4"  # still serving
    finally:
        await srv.drain()
