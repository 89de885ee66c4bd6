"""grpc.aio's per-call "is this handler async?" check of the request gate's fused wrap
takes its one-step answer, and the wrap still reads as a coroutine function everywhere.

grpc.aio asks of a unary-response behaviour, per call, ``inspect.isawaitable(b) or
inspect.iscoroutinefunction(b) or ...`` (``_is_async_handler`` in cygrpc's aio
``server.pyx.pxi``), twice on the request-streaming path the request gate hands it unary
calls on. For a plain coroutine function the first test says no and the second walks five
Python frames: 106 of ``defaults``' bytecodes per call (``python -m benchmarks.opcodes``).
The fused wrap is now handed to grpc.aio as :class:`meshkit._handlers._GrpcAsync`, whose
``__await__`` makes the first test say yes: ``inspect.iscoroutinefunction`` is no longer
asked of it per call (asked twice per call before).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions

_SVC = "hunt41.v1.Shape"
_CALLS = 5


async def _unary(request: bytes, context: Any) -> bytes:
    return b"async|" + request


def _plain(request: bytes, context: Any) -> bytes:  # run in a handler thread
    return b"def|" + request


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                _SVC,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
                    "Plain": grpc.unary_unary_rpc_method_handler(_plain),
                },
            ),
        )
    )


def _is_handler_wrap(obj: Any) -> bool:
    """Whether ``obj`` is (a partial of) meshkit's handler wrap, ``_reported``'s
    ``behavior``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    code = getattr(obj, "__code__", None)
    return (
        code is not None
        and code.co_name == "behavior"
        and Path(code.co_filename).name == "_handlers.py"
    )


# how grpc.aio gets meshkit's unary wrap: the request gate's fused one (stream-unary,
# checked twice per call), or, without the gate, the telemetry wrap or the checks' wrap
# (unary-unary, checked once per call)
_SETUPS = {
    "gated": ({}, 2),
    "nogate": ({"limits": meshkit.ServerLimits(read_requests=False)}, 1),
    "nogate-no-telemetry": (
        {"limits": meshkit.ServerLimits(read_requests=False), "telemetry": None},
        1,
    ),
}


@pytest.mark.parametrize("setup", sorted(_SETUPS))
@pytest.mark.parametrize("name", ["Unary", "Plain"])
async def test_grpc_does_not_ask_iscoroutinefunction_of_the_wrap_per_call(
    name: str, setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a method's first call, grpc.aio's per-call checks never reach
    ``inspect.iscoroutinefunction`` for meshkit's wrap (async and ``def`` handlers alike,
    with and without the request gate and telemetry), and every call is answered by its
    handler."""
    extra, per_call = _SETUPS[setup]
    registry = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=3600.0, poll_interval_s=600.0))
    telemetry = TelemetryOptions(
        registry=CollectorRegistry(), tracing=False, metrics=True, access_log=True
    )
    server = meshkit.MeshServer(
        "shape",
        [(_add, None)],
        registry=registry,
        options=meshkit.ServeOptions(
            **{
                "insecure": True,
                "instance_id": "s1",
                "drain_delay_s": 0,
                "grace_s": 1.0,
                "telemetry": telemetry,
                **extra,
            }
        ),
    )
    await server.start()
    prefix = b"async|" if name == "Unary" else b"def|"
    asked: list[Any] = []
    checked: list[Any] = []
    real_is_coro = inspect.iscoroutinefunction
    real_awaitable = inspect.isawaitable

    def iscoroutinefunction(obj: Any) -> bool:
        if _is_handler_wrap(obj):
            asked.append(obj)
        return real_is_coro(obj)

    def isawaitable(obj: Any) -> bool:
        if _is_handler_wrap(obj):
            checked.append(obj)
        return real_awaitable(obj)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(f"/{_SVC}/{name}")
            assert await call(b"warm", timeout=30) == prefix + b"warm"
            monkeypatch.setattr(inspect, "iscoroutinefunction", iscoroutinefunction)
            monkeypatch.setattr(inspect, "isawaitable", isawaitable)
            answers = [await call(b"%d" % i, timeout=30) for i in range(_CALLS)]
            monkeypatch.undo()
    finally:
        monkeypatch.undo()
        await server.drain()
        await registry.close()
    assert answers == [prefix + b"%d" % i for i in range(_CALLS)]
    # the check ran (grpc.aio's isawaitable, once or twice per call) and stopped there
    assert len(checked) == per_call * _CALLS, checked
    assert asked == []  # per_call per call before (10 or 5)
    wrap = checked[0]
    assert isinstance(wrap, functools.partial)
    # still a coroutine function to every check that asks (grpc.aio's, asyncio's, meshkit's)
    assert cygrpc._is_async_handler(wrap) is True
    assert inspect.iscoroutinefunction(wrap)
    assert asyncio.iscoroutinefunction(wrap)
    assert not inspect.isasyncgenfunction(wrap)


async def test_the_wrap_awaited_raises_as_a_function_would() -> None:
    """Awaiting the wrap itself (a mistake) raises ``TypeError``, as awaiting a function
    does; calling it gives the coroutine."""
    from meshkit._handlers import _GrpcAsync

    async def behaviour(request: Any, context: Any) -> Any:
        return request

    wrap = _GrpcAsync(behaviour)
    with pytest.raises(TypeError):
        await wrap
    with pytest.raises(TypeError):
        await behaviour  # type: ignore[misc]
    assert await wrap(b"x", None) == b"x"
