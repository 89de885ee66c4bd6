"""A mesh channel's multicallables keep grpc.aio's call signatures (meshkit/channel.py):
the unary-request kinds' ``__call__`` is ``_MultiCallable._open`` itself (a per-call cut:
no frame between the stub's call and the call's details), whose options stay
keyword-only; the stream-request kinds take them positionally, as grpc.aio's do. Real
grpc.aio server and local registry on loopback."""

from __future__ import annotations

import asyncio
import inspect

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, method, raw_server

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()
            if p.name != "self"]


@pytest.mark.parametrize("kind", _KINDS)
async def test_each_kind_has_grpc_aio_s_signature(registry: LocalRegistry, kind: str) -> None:
    """Parameter names, kinds (positional or keyword-only) and defaults of each
    multicallable's ``__call__`` are grpc.aio's own."""
    ch = meshkit.dial("echo", registry=registry,
                      options=meshkit.DialOptions(insecure=True, retry=None))
    try:
        ours = getattr(ch, kind)(method("Unary"))
        theirs = getattr(grpc.aio, "".join(w.title() for w in kind.split("_"))
                         + "MultiCallable")
        assert _params(type(ours).__call__) == _params(theirs.__call__)
    finally:
        await asyncio.wait_for(ch.close(), 5)


async def test_options_of_a_unary_call_are_keyword_only_and_work(
        registry: LocalRegistry) -> None:
    """A positional timeout is refused (TypeError) as by grpc.aio; keyword options (a
    timeout, metadata) reach the call, which is answered."""
    async with raw_server(handler("e1")) as (_, port):
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port))
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True, retry=None))
        try:
            await ch.wait_for_endpoints(1, timeout_s=10)
            unary = ch.unary_unary(method("Unary"))
            with pytest.raises(TypeError):
                unary(b"x", 10)  # type: ignore[misc]
            call = unary(b"x", timeout=10, metadata=(("k", "v"),))
            assert await call == b"e1|x"
            assert call.time_remaining() is not None
        finally:
            await asyncio.wait_for(ch.close(), 5)
