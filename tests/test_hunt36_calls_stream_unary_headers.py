"""``initial_metadata()`` of a stream-unary call returns once the server has sent its
headers, as grpc.aio's (its call's ``initial_metadata``), side by side with a raw grpc.aio
channel to the same server. meshkit's waited for the call's end: a client reading a header
the server sends first (a session, an upload id) before it writes its requests waited for
ever, the call waiting for those writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import SERVICE, raw_server
from tests.test_grpc_parity import DIALS


async def _session_first(requests: AsyncIterator[bytes], context: Any) -> bytes:
    await context.send_initial_metadata((("x-session", "s1"),))
    return b",".join([r async for r in requests])


async def _upload(ch: Any) -> tuple[Any, ...]:
    call = ch.stream_unary(f"/{SERVICE}/SessionFirst")()
    md = await asyncio.wait_for(call.initial_metadata(), 5)
    await call.write(md["x-session"].encode())
    await call.done_writing()
    answer = await asyncio.wait_for(call, 5)
    return (tuple(md), answer, tuple(await call.initial_metadata()))


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_initial_metadata_of_a_stream_unary_call_before_its_requests(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"SessionFirst": grpc.stream_unary_rpc_method_handler(_session_first)})
    async with raw_server(handler) as (_server, port):
        await registry.register(
            Instance(service="sessions", instance_id="s1", host="127.0.0.1", port=port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as raw:
            expected = await _upload(raw)
        assert expected == ((("x-session", "s1"),), b"s1", (("x-session", "s1"),))
        async with meshkit.dial("sessions", registry=registry, options=meshkit.DialOptions(
                insecure=True, **dial_kw)) as mesh:
            await mesh.wait_for_endpoints(1)
            assert await _upload(mesh) == expected
