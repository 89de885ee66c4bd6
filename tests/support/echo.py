"""A protobuf-free echo service over raw bytes, covering all four gRPC call kinds.

Used by the channel, server and integration tests and runnable as a process::

    python -m tests.support.echo --service echo --registry local:///tmp/r --instance-id e1

Methods (service ``meshkit.test.Echo``): ``Unary`` answers ``<instance_id>|<request>``;
``Sleep`` sleeps the request's milliseconds then answers the instance id; ``Fail`` aborts
with the status code named in the request (e.g. ``b"UNAVAILABLE"``; ``b"UNAVAILABLE:2"``
also sends trailing metadata ``retry-after: 2``); ``ServerStream``
answers ``n`` messages for request ``n``; ``FailStream`` sends ``n`` messages and then
aborts with a status, for request ``b"UNAVAILABLE:n"`` (``n`` may be 0); with
``b"UNAVAILABLE:n@e1"`` only instance ``e1`` fails, the others send 3 messages and end;
``ClientStream`` joins the requests;
``Bidi`` echoes each request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

import meshkit

SERVICE = "meshkit.test.Echo"


def method(name: str) -> str:
    """Full method path of ``name`` on the echo service."""
    return f"/{SERVICE}/{name}"


def handler(
    instance_id: str, delay_s: float = 0.0, served: list[str] | None = None
) -> grpc.GenericRpcHandler:
    """The echo service's generic handler; answers carry ``instance_id``.

    ``delay_s`` slows every ``Unary`` answer down; ``served`` (if given) gets the method
    name of every call this instance starts handling.
    """
    return grpc.method_handlers_generic_handler(
        SERVICE, method_handlers(instance_id, delay_s, served))


def method_handlers(
    instance_id: str, delay_s: float = 0.0, served: list[str] | None = None
) -> dict[str, grpc.RpcMethodHandler]:
    """The echo service's method handlers by short method name (see :func:`handler`)."""
    tag = instance_id.encode()

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if served is not None:
            served.append("Unary")
        if delay_s:
            await asyncio.sleep(delay_s)
        return tag + b"|" + request

    async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(int(request or b"0") / 1000)
        return tag

    async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if served is not None:
            served.append("Fail")
        code, _, retry_after = request.decode().partition(":")
        if retry_after:
            context.set_trailing_metadata((("retry-after", retry_after),))
        await context.abort(grpc.StatusCode[code], f"asked to fail on {instance_id}")
        raise AssertionError("unreachable")

    async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield tag + b"|" + str(i).encode()

    async def fail_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        if served is not None:
            served.append("FailStream")
        code, _, rest = request.decode().partition(":")
        n, _, only = rest.partition("@")
        if only and only != instance_id:
            for i in range(3):
                yield tag + b"|" + str(i).encode()
            return
        for i in range(int(n or 0)):
            yield tag + b"|" + str(i).encode()
        await context.abort(grpc.StatusCode[code], f"asked to fail on {instance_id}")

    async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        parts = [r async for r in requests]
        return tag + b"|" + b",".join(parts)

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield tag + b"|" + r

    return {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "FailStream": grpc.unary_stream_rpc_method_handler(fail_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }


def add_echo(
    instance_id: str, delay_s: float = 0.0, served: list[str] | None = None, *,
    registered: bool = False,
) -> tuple[Any, None]:
    """A ``(add_fn, servicer)`` pair for :class:`meshkit.MeshServer` (see :func:`handler`);
    ``registered``: the methods are added as registered method handlers, as the
    ``add_*_to_server`` functions grpcio-tools generates (1.62 and later) add them."""

    def add(_servicer: Any, server: Any) -> None:
        if registered:
            server.add_registered_method_handlers(
                SERVICE, method_handlers(instance_id, delay_s, served))
        else:
            server.add_generic_rpc_handlers((handler(instance_id, delay_s, served),))

    return add, None


@contextlib.asynccontextmanager
async def raw_echo(
    instance_id: str = "e1", *, server_interceptors: Sequence[Any] | None = None,
    channel_interceptors: Sequence[Any] | None = None,
) -> AsyncIterator[grpc.aio.Channel]:
    """A plain grpc.aio channel to a plain grpc.aio echo server (no mesh on either side,
    plaintext loopback): the baseline the benchmarks and the cycle test compare with. Both
    are closed on the way out."""
    server = grpc.aio.server(interceptors=server_interceptors)
    server.add_generic_rpc_handlers((handler(instance_id),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=channel_interceptors)
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


@contextlib.asynccontextmanager
async def raw_server(*handlers: grpc.GenericRpcHandler) -> AsyncIterator[tuple[Any, int]]:
    """A plain grpc.aio server with ``handlers`` on loopback, plaintext, not registered
    anywhere: ``(server, port)``; stopped on the way out."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def mesh_echo(service: str, instance_id: str, registry: Any,
                    **options: Any) -> AsyncIterator[meshkit.MeshServer]:
    """A started :class:`meshkit.MeshServer` of ``service`` serving the echo service as
    ``instance_id``, registered in ``registry``: plaintext, no drain delay, 0.5 s grace
    (``options``: other :class:`meshkit.ServeOptions` fields). Drained on the way out, and
    ``registry`` closed after it."""
    opts: dict[str, Any] = {"insecure": True, "instance_id": instance_id,
                            "drain_delay_s": 0.0, "grace_s": 0.5, **options}
    try:
        srv = meshkit.MeshServer(service, [add_echo(instance_id)], registry=registry,
                                 options=meshkit.ServeOptions(**opts))
        await srv.start()
        try:
            yield srv
        finally:
            await srv.drain()
    finally:
        await registry.close()


def main() -> None:
    """Run one echo instance until SIGTERM (used by the process tests)."""
    p = argparse.ArgumentParser()
    p.add_argument("--service", default="echo")
    p.add_argument("--registry", required=True)
    p.add_argument("--instance-id", required=True)
    p.add_argument("--drain-delay-s", type=float, default=0.3)
    p.add_argument("--grace-s", type=float, default=5.0)
    args = p.parse_args()

    async def run() -> None:
        await meshkit.serve(
            args.service,
            [add_echo(args.instance_id)],
            registry=meshkit.registry_from_uri(args.registry),
            options=meshkit.ServeOptions(
                insecure=True,
                instance_id=args.instance_id,
                drain_delay_s=args.drain_delay_s,
                grace_s=args.grace_s,
            ),
            on_started=lambda s: print(f"READY {s.port}", flush=True),
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
