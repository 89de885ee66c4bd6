"""A response stream's serializer error reached the caller with its text.

A handler's unhandled exception is answered ``UNKNOWN`` "Unexpected <Type> in the
handler (logged by the server)": its text, which may hold a password or a connection
string, stays in the server's log. A unary response is serialized inside meshkit's
wrap, so its serializer's exception is answered the same way. But the messages of a
response stream (yielded, or written with ``context.write``) are serialized by grpc.aio
as it sends them, which answered a serializer's exception ``UNKNOWN`` "Unexpected <class
'ValueError'>: <its text>": a protobuf ``EncodeError`` or a serializer of one's own
quoting the field it refused (``password=...``) went to every caller. Such an exception
now reaches grpc.aio as ``ResponseSerializerError`` naming the serializer's exception
type only, chained to it (grpc.aio logs both on the server); with
``ServeOptions(expose_exception_text=True)`` the text goes to the caller as before.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions

pytestmark = pytest.mark.timeout(60)

SECRET = "Zq8c9-hunter2"


def _refuse(message: Any) -> bytes:
    raise ValueError(f"cannot encode field password={SECRET}")


async def _yields(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request


async def _writes(request: bytes, context: Any) -> None:
    await context.write(request)


async def _bidi(requests: Any, context: Any) -> AsyncIterator[bytes]:
    async for item in requests:
        yield item


def _add(server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "Yields": grpc.unary_stream_rpc_method_handler(_yields, response_serializer=_refuse),
        "Writes": grpc.unary_stream_rpc_method_handler(_writes, response_serializer=_refuse),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, response_serializer=_refuse),
    }),))


async def _error(channel: meshkit.MeshChannel, method: str) -> grpc.aio.AioRpcError:
    async def one() -> AsyncIterator[bytes]:
        yield b"x"

    if method == "Bidi":
        call: Any = channel.stream_stream("/t.S/Bidi")(one(), timeout=10)
    else:
        call = channel.unary_stream(f"/t.S/{method}")(b"x", timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    return info.value


CONFIGS = {
    "default": {},
    "no-telemetry": {"telemetry": None},
    "send-limit": {"server_options": (("grpc.max_send_message_length", 1 << 20),)},
    "exposed": {"expose_exception_text": True},
}


@pytest.mark.parametrize("method", ["Yields", "Writes", "Bidi"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
async def test_the_caller_gets_no_serializer_text(config: str, method: str) -> None:
    registry = LocalRegistry(LocalOptions(path=tempfile.mkdtemp(), ttl_s=15.0))
    fields: dict[str, Any] = {"telemetry": TelemetryOptions(access_log=False),
                              **CONFIGS[config]}
    server = meshkit.MeshServer("t", [(lambda _s, srv: _add(srv), None)], registry=registry,
                                options=meshkit.ServeOptions(
                                    insecure=True, instance_id="i1", drain_delay_s=0,
                                    grace_s=1, admin=None, **fields))
    await server.start()
    channel = meshkit.dial("t", registry=registry,
                           options=meshkit.DialOptions(insecure=True, telemetry=None))
    try:
        await channel.wait_for_endpoints(1, timeout_s=10)
        with capture_logs() as logs:
            err = await _error(channel, method)
    finally:
        await channel.close()
        await server.drain()
    assert err.code() is grpc.StatusCode.UNKNOWN
    if config == "exposed":
        assert SECRET in (err.details() or "")
        return
    assert SECRET not in (err.details() or ""), err.details()
    assert "ValueError" in (err.details() or "")
    # "(logged by the server)": once, the serializer's own exception with it
    errors = [e for e in logs if e.get("log_level") == "error"]
    assert len(errors) == 1, logs
    assert errors[0]["error_type"] == "ValueError"
    assert SECRET in str(errors[0]["exc_info"])
