"""grpc.aio's per-call "is this handler async?" check of the request gate's
response-streaming wraps takes its one-step answer.

The gate hands grpc.aio every call as a request-streaming one. For a stream-stream
behaviour grpc.aio asks, per call, ``_is_async_handler(b)`` (``inspect.isawaitable(b)
or inspect.iscoroutinefunction(b) or inspect.isasyncgenfunction(b)``) in
``_handle_stream_stream_rpc``, then ``iscoroutinefunction`` and ``isasyncgenfunction``
again in ``_finish_handler_with_stream_responses``. The gate's response-streaming wraps
(``stream_out`` for unary-stream methods, ``admitted_stream`` for stream-stream ones,
the health ``Watch``'s ``watch``) were plain async generator functions: each of the two
asked twice per call (about 88 bytecodes of a stream call). As
:class:`meshkit._handlers._GrpcAsync` (as the unary-response wraps have been since
8596fb3e) the first check stops at ``isawaitable``; the second still asks both, and
answers "async generator" as before.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions

_SVC = "hunt42.v1.StreamShape"
_CALLS = 5


async def _down(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for part in (b"a", b"b"):
        yield request + b"|" + part


def _plain_down(request: bytes, context: Any) -> Iterator[bytes]:  # in a thread
    for part in (b"a", b"b"):
        yield b"def " + request + b"|" + part


async def _bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield b"bidi " + r


def _plain_bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:  # in a thread
    for r in requests:
        yield b"def-bidi " + r


_HANDLERS = {
    "Down": grpc.unary_stream_rpc_method_handler(_down),
    "PlainDown": grpc.unary_stream_rpc_method_handler(_plain_down),
    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    "PlainBidi": grpc.stream_stream_rpc_method_handler(_plain_bidi),
}


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, _HANDLERS),))


def _meshkit_wrap(obj: Any) -> str | None:
    """The name of meshkit's wrap ``obj`` is (or is a partial of), with its module,
    else ``None``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    code = getattr(obj, "__code__", None)
    if code is None:
        return None
    module = Path(code.co_filename)
    if module.parent.name != "meshkit" or module.name not in ("_handlers.py", "_limits.py"):
        return None
    return f"{module.stem}.{code.co_name}"


async def _call(channel: grpc.aio.Channel, name: str, tag: bytes) -> list[bytes]:
    path = f"/{_SVC}/{name}"
    if name in ("Down", "PlainDown"):
        return [m async for m in channel.unary_stream(path)(tag, timeout=30)]
    return [m async for m in channel.stream_stream(path)(iter([tag, b"x"]), timeout=30)]


def _answer(name: str, tag: bytes) -> list[bytes]:
    return {
        "Down": [tag + b"|a", tag + b"|b"],
        "PlainDown": [b"def " + tag + b"|a", b"def " + tag + b"|b"],
        "Bidi": [b"bidi " + tag, b"bidi x"],
        "PlainBidi": [b"def-bidi " + tag, b"def-bidi x"],
    }[name]


# with telemetry and without; without evicting waiting request streams (the gate's
# other wrap of an async request stream)
_SETUPS: dict[str, dict[str, Any]] = {
    "telemetry": {},
    "no-telemetry": {"telemetry": None},
    "no-eviction": {"limits": meshkit.ServerLimits(evict_waiting_after_s=None)},
}


class _Asks:
    """inspect's three checks, counting the asks about meshkit's wraps."""

    def __init__(self) -> None:
        self.awaitable: list[Any] = []
        self.coroutine: list[Any] = []
        self.asyncgen: list[Any] = []
        self._real = (inspect.isawaitable, inspect.iscoroutinefunction,
                      inspect.isasyncgenfunction)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_awaitable, real_coroutine, real_asyncgen = self._real

        def isawaitable(obj: Any) -> bool:
            if _meshkit_wrap(obj) is not None:
                self.awaitable.append(obj)
            return real_awaitable(obj)

        def iscoroutinefunction(obj: Any) -> bool:
            if _meshkit_wrap(obj) is not None:
                self.coroutine.append(obj)
            return real_coroutine(obj)

        def isasyncgenfunction(obj: Any) -> bool:
            if _meshkit_wrap(obj) is not None:
                self.asyncgen.append(obj)
            return real_asyncgen(obj)

        monkeypatch.setattr(inspect, "isawaitable", isawaitable)
        monkeypatch.setattr(inspect, "iscoroutinefunction", iscoroutinefunction)
        monkeypatch.setattr(inspect, "isasyncgenfunction", isasyncgenfunction)


def _server(tmp_path: Path, setup: str) -> tuple[meshkit.MeshServer, LocalRegistry]:
    registry = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=3600.0,
                                          poll_interval_s=600.0))
    options: dict[str, Any] = {
        "insecure": True,
        "instance_id": "s1",
        "drain_delay_s": 0,
        "grace_s": 1.0,
        "telemetry": TelemetryOptions(
            registry=CollectorRegistry(), tracing=False, metrics=True, access_log=False
        ),
        **_SETUPS[setup],
    }
    server = meshkit.MeshServer(
        "streamshape", [(_add, None)], registry=registry,
        options=meshkit.ServeOptions(**options))
    return server, registry


def _check_wrap(asks: _Asks) -> None:
    # one check per call (_handle_stream_stream_rpc's), stopped at isawaitable; then
    # _finish_handler_with_stream_responses's own two asks, once each per call (before:
    # two of each per call, the first check walking on past isawaitable)
    assert len(asks.awaitable) == _CALLS, [_meshkit_wrap(a) for a in asks.awaitable]
    wrap = asks.awaitable[0]
    assert all(a is wrap for a in asks.awaitable)
    assert len(asks.coroutine) == _CALLS, [_meshkit_wrap(a) for a in asks.coroutine]
    assert len(asks.asyncgen) == _CALLS, [_meshkit_wrap(a) for a in asks.asyncgen]
    assert all(a is wrap for a in asks.coroutine + asks.asyncgen)
    # still an async generator function to every check that asks
    assert cygrpc._is_async_handler(wrap) is True
    assert inspect.isasyncgenfunction(wrap)
    assert not inspect.iscoroutinefunction(wrap)
    assert wrap.__name__ == wrap.func.__name__


@pytest.mark.parametrize("setup", sorted(_SETUPS))
@pytest.mark.parametrize("name", sorted(_HANDLERS))
async def test_grpc_asks_the_gates_stream_wrap_once_per_call(
    name: str, setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a method's first call, grpc.aio's "is it async?" check of the request
    gate's response-streaming wrap stops at ``inspect.isawaitable``, and every call is
    answered by its handler, message for message."""
    server, registry = _server(tmp_path, setup)
    await server.start()
    asks = _Asks()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _call(channel, name, b"warm") == _answer(name, b"warm")
            asks.install(monkeypatch)
            answers = [await _call(channel, name, b"%d" % i) for i in range(_CALLS)]
            monkeypatch.undo()
    finally:
        monkeypatch.undo()
        await server.drain()
        await registry.close()
    assert answers == [_answer(name, b"%d" % i) for i in range(_CALLS)]
    _check_wrap(asks)
    assert _meshkit_wrap(asks.awaitable[0]) in ("_limits.stream_out",
                                                 "_limits.admitted_stream")


async def test_health_watch_wrap_is_asked_once_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health service's ``Watch``, read under ``first_message_timeout_s`` by the
    gate's ``watch`` wrap: the same one-step answer, and each stream gets its status."""
    server, registry = _server(tmp_path, "telemetry")
    await server.start()
    asks = _Asks()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def first_status() -> int:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
                try:
                    async for reply in call:
                        return int(reply.status)
                finally:
                    call.cancel()
                raise AssertionError("no status")

            assert await first_status() == health_pb2.HealthCheckResponse.SERVING
            asks.install(monkeypatch)
            statuses = [await first_status() for _ in range(_CALLS)]
            monkeypatch.undo()
    finally:
        monkeypatch.undo()
        await server.drain()
        await registry.close()
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * _CALLS
    _check_wrap(asks)
    assert _meshkit_wrap(asks.awaitable[0]) == "_limits.watch"
