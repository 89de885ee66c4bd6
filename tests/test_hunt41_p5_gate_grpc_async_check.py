"""grpc.aio's per-call "is this handler async?" check of the request gate's own wraps
takes its one-step answer, and a user's ``functools.wraps`` copy of :data:`GATE_MARK`
is not taken for the wrap itself.

grpc.aio asks of a unary-response behaviour, per call, ``inspect.isawaitable(b) or
inspect.iscoroutinefunction(b) or ...`` (``_is_async_handler`` in cygrpc's aio
``server.pyx.pxi``): twice per call on the request-streaming path the gate hands it
unary-request calls on. Without telemetry, no wrap of ``meshkit._handlers`` is fused
into the gate, and grpc.aio got the gate's own
``unary_out`` (unary requests) or ``_admitted_coroutine``'s wrap (request streams), plain
coroutine functions: ``iscoroutinefunction`` asked twice per unary call (106 of
``benchmarks.opcodes``' ``nolog`` bytecodes per call). They are now
:class:`meshkit._handlers._GrpcAsync`, as the fused wrap has been since 8596fb3e.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._limits import RequestGate
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions, server_interceptors
from tests.test_hunt41_server_percall_grpc_async_check import _CALLS, _plain, _unary

_SVC = "hunt41.v1.GateShape"


async def _upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"up|" + b",".join([r async for r in requests])


def _plain_upload(requests: Iterator[bytes], context: Any) -> bytes:  # in a thread
    return b"def-up|" + b",".join(requests)


_HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
    "Plain": grpc.unary_unary_rpc_method_handler(_plain),
    "Upload": grpc.stream_unary_rpc_method_handler(_upload),
    "PlainUpload": grpc.stream_unary_rpc_method_handler(_plain_upload),
}


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, _HANDLERS),))


def _meshkit_wrap(obj: Any) -> str | None:
    """The name of meshkit's wrap ``obj`` is (or is a partial of), with its module
    (``_handlers.behavior``, ``_limits.unary_out``...), else ``None``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    code = getattr(obj, "__code__", None)
    if code is None:
        return None
    module = Path(code.co_filename)
    if module.parent.name != "meshkit" or module.name not in ("_handlers.py", "_limits.py"):
        return None
    return f"{module.stem}.{code.co_name}"


# unary-request and request-streaming methods, async and def: the gate hands grpc.aio
# a stream-unary behaviour, checked twice per call (_handle_stream_unary_rpc and
# _finish_handler_with_unary_response)
_METHODS = ("Unary", "Plain", "Upload", "PlainUpload")
_CHECKS = 2

# gated servers: without telemetry (benchmarks.opcodes' nolog; the gate's own wraps reach
# grpc.aio), the same without evicting waiting request streams (the gate's other wrap of
# an async request stream), and with telemetry (request streams: the gate's wrap too)
_SETUPS: dict[str, dict[str, Any]] = {
    "no-telemetry": {"telemetry": None},
    "no-telemetry-no-eviction": {
        "telemetry": None,
        "limits": meshkit.ServerLimits(evict_waiting_after_s=None),
    },
    "telemetry": {},
}


async def _call(channel: grpc.aio.Channel, name: str, tag: bytes) -> Any:
    path = f"/{_SVC}/{name}"
    if name in ("Unary", "Plain"):
        return await channel.unary_unary(path)(tag, timeout=30)
    return await channel.stream_unary(path)(iter([tag, b"x"]), timeout=30)


def _answer(name: str, tag: bytes) -> Any:
    return {
        "Unary": b"async|" + tag,
        "Plain": b"def|" + tag,
        "Upload": b"up|" + tag + b",x",
        "PlainUpload": b"def-up|" + tag + b",x",
    }[name]


@pytest.mark.parametrize("setup", sorted(_SETUPS))
@pytest.mark.parametrize("name", _METHODS)
async def test_grpc_does_not_ask_iscoroutinefunction_of_the_gates_wrap_per_call(
    name: str, setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a method's first call, grpc.aio's per-call checks of the behaviour the
    request gate hands it stop at ``inspect.isawaitable``, and every call is answered by
    its handler."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "r", ttl_s=3600.0, poll_interval_s=600.0))
    options: dict[str, Any] = {
        "insecure": True,
        "instance_id": "s1",
        "drain_delay_s": 0,
        "grace_s": 1.0,
        "telemetry": TelemetryOptions(
            registry=CollectorRegistry(), tracing=False, metrics=True, access_log=True
        ),
        **_SETUPS[setup],
    }
    server = meshkit.MeshServer(
        "gateshape", [(_add, None)], registry=registry, options=meshkit.ServeOptions(**options)
    )
    await server.start()
    asked: list[Any] = []
    checked: list[Any] = []
    real_is_coro = inspect.iscoroutinefunction
    real_awaitable = inspect.isawaitable

    def iscoroutinefunction(obj: Any) -> bool:
        if _meshkit_wrap(obj) is not None:
            asked.append(obj)
        return real_is_coro(obj)

    def isawaitable(obj: Any) -> bool:
        if _meshkit_wrap(obj) is not None:
            checked.append(obj)
        return real_awaitable(obj)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _call(channel, name, b"warm") == _answer(name, b"warm")
            monkeypatch.setattr(inspect, "iscoroutinefunction", iscoroutinefunction)
            monkeypatch.setattr(inspect, "isawaitable", isawaitable)
            answers = [await _call(channel, name, b"%d" % i) for i in range(_CALLS)]
            monkeypatch.undo()
    finally:
        monkeypatch.undo()
        await server.drain()
        await registry.close()
    assert answers == [_answer(name, b"%d" % i) for i in range(_CALLS)]
    assert len(checked) == _CHECKS * _CALLS, [_meshkit_wrap(c) for c in checked]
    wrap = checked[0]
    assert all(c is wrap for c in checked)
    if setup.startswith("no-telemetry") or name not in ("Unary", "Plain"):
        # the gate's own wrap, not one of meshkit._handlers fused into it
        assert _meshkit_wrap(wrap) in (
            "_limits.unary_out",
            "_limits.admitted",
            "_limits.admitted_waiting",
        )
    # the check stopped at isawaitable (before: iscoroutinefunction asked at each check,
    # 10 asks per 5 calls)
    assert asked == [], [_meshkit_wrap(a) for a in asked]
    assert isinstance(wrap, functools.partial)
    # still a coroutine function to every check that asks (grpc.aio's, asyncio's, meshkit's)
    assert cygrpc._is_async_handler(wrap) is True
    assert inspect.iscoroutinefunction(wrap)
    assert asyncio.iscoroutinefunction(wrap)
    assert not inspect.isasyncgenfunction(wrap)


class _Decorating(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A user's interceptor decorating each unary-unary behaviour with
    ``functools.wraps`` (the usual decorator), counting the calls through it."""

    def __init__(self) -> None:
        self.through = 0
        self._made: dict[Any, Any] = {}  # once per behaviour, as a careful decorator

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        made = self._made.get(inner)
        if made is None:

            @functools.wraps(inner)
            async def decorated(request: Any, context: Any) -> Any:
                self.through += 1
                return await inner(request, context)

            made = self._made[inner] = handler._replace(unary_unary=decorated)
        return made


async def test_a_wrapper_with_a_copied_gate_mark_runs() -> None:
    """A behaviour decorated with ``functools.wraps`` carries the wrap's
    :data:`~meshkit._handlers.GATE_MARK` too (copied with its ``__dict__``); the request
    gate must not take the mark for the wrap itself (fusing the wrap and calling past the
    decorator), as for the request guard's marks (58eaaf09). Not reachable through
    ``ServeOptions`` (the unhandled-error check stands between gate and a user's
    interceptors): here on a plain grpc.aio server, the gate outermost, the user's
    interceptor before meshkit's telemetry."""
    from meshkit._handlers import GATE_MARK

    decorating = _Decorating()
    telemetry = TelemetryOptions(
        registry=CollectorRegistry(), tracing=False, metrics=True, access_log=False
    )
    gate = RequestGate(meshkit.ServerLimits())
    server = grpc.aio.server(
        interceptors=[gate, decorating, *server_interceptors("gateshape", telemetry)]
    )
    _add(None, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answers = [await _call(channel, "Unary", b"%d" % i) for i in range(3)]
    finally:
        await server.stop(None)
        gate.close()
    assert answers == [b"async|%d" % i for i in range(3)]
    (made,) = decorating._made.values()
    assert getattr(made.unary_unary, GATE_MARK, None) is not None  # the copied mark
    assert decorating.through == 3  # 0 when the copied mark was taken
