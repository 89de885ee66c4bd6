"""A user's server interceptor that wraps a method's behaviour with ``functools.wraps``
runs on every call.

``functools.wraps`` copies the wrapped function's ``__dict__`` onto the wrapper, and with
it the marks by which meshkit's request guard tells the handler wrap "run my check and
call my inner behaviour directly" (``GUARD_MARK``, ``STREAM_GUARD_MARK``). The wrap read
the copied mark on the user's wrapper and called the servicer directly: the user's
interceptor (which ``MeshServer`` runs inside the mesh's wraps, around the guard) never
ran, though it was installed and had returned its wrapper (measured: 0 of 3 calls, every
kind, with and without telemetry).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions

_SVC = "hunt41.v1.Wrapped"
_CALLS = 3


async def _uu(request: bytes, context: Any) -> bytes:
    return b"uu|" + request


async def _us(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"us|" + request


async def _su(requests: Any, context: Any) -> bytes:
    return b"su|" + b"".join([r async for r in requests])


async def _ss(requests: Any, context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield b"ss|" + r


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                _SVC,
                {
                    "UU": grpc.unary_unary_rpc_method_handler(_uu),
                    "US": grpc.unary_stream_rpc_method_handler(_us),
                    "SU": grpc.stream_unary_rpc_method_handler(_su),
                    "SS": grpc.stream_stream_rpc_method_handler(_ss),
                },
            ),
        )
    )


class _Wrapping(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every behaviour as decorators usually do (``functools.wraps``), counting the
    calls its wrapper sees, by method."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        seen, method = self.seen, details.method.rsplit("/", 1)[1]
        if handler.response_streaming:
            kind = "stream_stream" if handler.request_streaming else "unary_stream"
            inner = getattr(handler, kind)

            @functools.wraps(inner)
            async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
                seen.append(method)
                async for item in inner(request, context):
                    yield item

            wrapper: Any = streamed
        else:
            kind = "stream_unary" if handler.request_streaming else "unary_unary"
            inner = getattr(handler, kind)

            @functools.wraps(inner)
            async def answered(request: Any, context: Any) -> Any:
                seen.append(method)
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result

            wrapper = answered
        factory = getattr(grpc, f"{kind}_rpc_method_handler")
        return factory(
            wrapper,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


_SETUPS = {
    "telemetry": {},
    "no-telemetry": {"telemetry": None},
    "no-gate": {"limits": meshkit.ServerLimits(read_requests=False)},
}


@pytest.mark.parametrize("setup", sorted(_SETUPS))
async def test_a_functools_wraps_interceptor_runs_on_every_call(setup: str, tmp_path: Path) -> None:
    """Every call of every kind passes through the user's wrapper (before: none of the
    unary-unary, unary-stream and stream-stream calls, whose wrap took the guard's
    copied mark on the wrapper and skipped it) and is answered by its handler."""
    wrapping = _Wrapping()
    extra: dict[str, Any] = {
        "telemetry": TelemetryOptions(
            registry=CollectorRegistry(), tracing=False, metrics=True, access_log=False
        ),
        **_SETUPS[setup],
    }
    registry = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=3600.0, poll_interval_s=600.0))
    server = meshkit.MeshServer(
        "wrapped",
        [(_add, None)],
        registry=registry,
        options=meshkit.ServeOptions(
            insecure=True,
            instance_id="w1",
            drain_delay_s=0,
            grace_s=1.0,
            interceptors=(wrapping,),
            **extra,
        ),
    )
    await server.start()
    answers: dict[str, list[Any]] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            uu = channel.unary_unary(f"/{_SVC}/UU")
            us = channel.unary_stream(f"/{_SVC}/US")
            su = channel.stream_unary(f"/{_SVC}/SU")
            ss = channel.stream_stream(f"/{_SVC}/SS")
            for i in range(_CALLS):
                req = b"%d" % i
                answers.setdefault("UU", []).append(await uu(req, timeout=30))
                answers.setdefault("US", []).append([r async for r in us(req, timeout=30)])
                answers.setdefault("SU", []).append(await su(iter([req, req]), timeout=30))
                answers.setdefault("SS", []).append([r async for r in ss(iter([req]), timeout=30)])
    finally:
        await server.drain()
        await registry.close()
    reqs = [b"%d" % i for i in range(_CALLS)]
    assert answers == {
        "UU": [b"uu|" + r for r in reqs],
        "US": [[b"us|" + r] for r in reqs],
        "SU": [b"su|" + r + r for r in reqs],
        "SS": [[b"ss|" + r] for r in reqs],
    }
    assert sorted(wrapping.seen) == sorted(["UU", "US", "SU", "SS"] * _CALLS)
