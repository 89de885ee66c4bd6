"""A per-call ``ClientInterceptor`` that changes ``details.method`` before ``proceed``.

``ClientCallDetails`` says interceptors may change it before ``proceed`` (a routing or
versioning interceptor: ``/pkg.v1.Svc/M`` to ``/pkg.v2.Svc/M``), as a grpc.aio client
interceptor's ``client_call_details._replace(method=...)`` sends the call to the new
method. The attempt was made on the original method's multicallable, so the change was
ignored: the call went to the method the stub was made for. Real servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor

_SVC = "meshkit.test.Reroute"


def _add() -> tuple[Any, None]:
    async def uu_a(req: bytes, ctx: Any) -> bytes:
        return b"A:" + req

    async def uu_b(req: bytes, ctx: Any) -> bytes:
        return b"B:" + req

    async def us_a(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
        yield b"A:" + req

    async def us_b(req: bytes, ctx: Any) -> AsyncIterator[bytes]:
        yield b"B:" + req

    async def su_a(reqs: AsyncIterator[bytes], ctx: Any) -> bytes:
        return b"A:" + b"".join([r async for r in reqs])

    async def su_b(reqs: AsyncIterator[bytes], ctx: Any) -> bytes:
        return b"B:" + b"".join([r async for r in reqs])

    async def ss_a(reqs: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        async for r in reqs:
            yield b"A:" + r

    async def ss_b(reqs: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
        async for r in reqs:
            yield b"B:" + r

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "UU_A": grpc.unary_unary_rpc_method_handler(uu_a),
        "UU_B": grpc.unary_unary_rpc_method_handler(uu_b),
        "US_A": grpc.unary_stream_rpc_method_handler(us_a),
        "US_B": grpc.unary_stream_rpc_method_handler(us_b),
        "SU_A": grpc.stream_unary_rpc_method_handler(su_a),
        "SU_B": grpc.stream_unary_rpc_method_handler(su_b),
        "SS_A": grpc.stream_stream_rpc_method_handler(ss_a),
        "SS_B": grpc.stream_stream_rpc_method_handler(ss_b),
    })
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _ToB(ClientInterceptor):
    """Sends every call of a method ending ``_A`` to its ``_B`` twin."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def _reroute(self, details: ClientCallDetails) -> None:
        self.seen.append(details.method)
        if details.method.endswith("_A"):
            details.method = details.method[:-2] + "_B"

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        self._reroute(details)
        return await proceed(details, request)

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: Any) -> Any:
        self._reroute(details)
        return await proceed(details, request)


class _ToBAio(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        method = client_call_details.method  # bytes here (grpc.aio encodes it first)
        return await continuation(
            client_call_details._replace(method=method[:-2] + b"_B"), request)


@pytest.fixture
async def server(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    srv = meshkit.MeshServer("reroute", [_add()], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="r1",
                                                          drain_delay_s=0.0, admin=None))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.drain()


@pytest.mark.parametrize("inline", ["1", "0"])
async def test_a_changed_method_is_the_one_called_for_every_kind(
        registry: LocalRegistry, server: meshkit.MeshServer, inline: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """All four kinds (the unary-unary one on the inline path and on grpc.aio's public
    path) reach the method the interceptor set, as grpc.aio's interceptor does."""
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    icpt = _ToB()
    opts = meshkit.DialOptions(insecure=True, interceptors=(icpt,))
    async with meshkit.dial("reroute", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        uu = await ch.unary_unary(f"/{_SVC}/UU_A")(b"x", timeout=5)
        us = [m async for m in ch.unary_stream(f"/{_SVC}/US_A")(b"x", timeout=5)]
        su = await ch.stream_unary(f"/{_SVC}/SU_A")(iter([b"x", b"y"]), timeout=5)
        ss = [m async for m in ch.stream_stream(f"/{_SVC}/SS_A")(iter([b"x"]), timeout=5)]
        # a call of the same stub the interceptor leaves alone keeps its method
        kept = await ch.unary_unary(f"/{_SVC}/UU_B")(b"z", timeout=5)
    assert (uu, us, su, ss, kept) == (b"B:x", [b"B:x"], b"B:xy", [b"B:x"], b"B:z")
    assert icpt.seen[:4] == [f"/{_SVC}/UU_A", f"/{_SVC}/US_A", f"/{_SVC}/SU_A",
                             f"/{_SVC}/SS_A"]


async def test_grpc_aio_sends_the_call_to_the_changed_method(
        server: meshkit.MeshServer) -> None:
    """The behaviour compared with: a grpc.aio interceptor's changed method is called."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                         interceptors=[_ToBAio()]) as ch:
        assert await ch.unary_unary(f"/{_SVC}/UU_A")(b"x", timeout=5) == b"B:x"


async def test_the_stub_keeps_its_method_after_a_rerouted_call(
        registry: LocalRegistry, server: meshkit.MeshServer) -> None:
    """A rerouted call does not move the stub: the next call starts from its own
    method again (the interceptor sees ``_A`` each time) and a second stub of the
    original method on the same channel is not answered by the other one."""
    icpt = _ToB()

    class _Once(ClientInterceptor):
        def __init__(self) -> None:
            self.n = 0

        async def intercept_unary(self, details: ClientCallDetails, request: Any,
                                  proceed: Any) -> Any:
            self.n += 1
            if self.n == 1:
                details.method = details.method[:-2] + "_B"
            return await proceed(details, request)

    opts = meshkit.DialOptions(insecure=True, interceptors=(_Once(), icpt))
    async with meshkit.dial("reroute", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        stub = ch.unary_unary(f"/{_SVC}/UU_A")
        first = await stub(b"1", timeout=5)
        second = await stub(b"2", timeout=5)
    assert first == b"B:1"  # _Once rerouted it; _ToB saw _B and left it
    assert second == b"B:2"  # _ToB rerouted it
    assert icpt.seen == [f"/{_SVC}/UU_B", f"/{_SVC}/UU_A"]
