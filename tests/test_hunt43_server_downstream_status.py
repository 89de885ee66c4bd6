"""A middle tier's handler that lets its downstream call's refusal escape.

A -> B -> C: C refuses B's call (a fail-closed rate-limit refusal, ``UNAVAILABLE`` with
``meshkit-ratelimit-unavailable``; a busy server's ``RESOURCE_EXHAUSTED``; C down) and B's
handler lets the ``AioRpcError`` escape. B answered A ``UNKNOWN``, which A's outlier
ejection counts against B (the default failure codes) although B is healthy: every B
replica was ejected for C's outage. Now B answers ``RESOURCE_EXHAUSTED`` (no default
failure code, retried by no default policy: no hop multiplies C's refusal) with the trailer
``meshkit-downstream-status: <C's code>``; C's details and trailers stay on B's side. Any
other downstream status (B's bad request to C: its fault) stays ``UNKNOWN``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryPolicy

_DOWN = "hunt43.Down"
_MID = "hunt43.Mid"
_SECRET = "redis://:hunter2@10.0.0.9:6379"

_DOWN_ANSWERS: dict[str, tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]] = {
    "StorageDown": (grpc.StatusCode.UNAVAILABLE, (("meshkit-ratelimit-unavailable", "1"),)),
    "Busy": (grpc.StatusCode.RESOURCE_EXHAUSTED, (("meshkit-nack", "1"),)),
    "Invalid": (grpc.StatusCode.INVALID_ARGUMENT, ()),
}


async def _down(request: bytes, context: Any) -> bytes:
    code, trailers = _DOWN_ANSWERS[request.decode()]
    await context.abort(code, f"refused: {_SECRET}", trailing_metadata=trailers)
    raise AssertionError("unreachable")


def _add_down(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_DOWN, {
        "Call": grpc.unary_unary_rpc_method_handler(_down)}),))


def _add_mid(target: str) -> Any:
    async def unary(request: bytes, context: Any) -> bytes:
        async with grpc.aio.insecure_channel(target) as raw:
            ch: Any = raw
            answer: bytes = await ch.unary_unary(f"/{_DOWN}/Call")(request, timeout=5)
            return answer

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        async with grpc.aio.insecure_channel(target) as raw:
            ch: Any = raw
            yield await ch.unary_unary(f"/{_DOWN}/Call")(request, timeout=5)

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_MID, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        }),))

    return add


@contextlib.asynccontextmanager
async def _chain(registry: LocalRegistry, **options: Any) -> AsyncIterator[grpc.aio.Channel]:
    """A plain channel to a middle-tier server (``ServeOptions(**options)``) whose handlers
    call a downstream meshkit server and let its error escape."""
    down = meshkit.MeshServer("down", [(_add_down, None)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await down.start()
    try:
        mid = meshkit.MeshServer(
            "mid", [(_add_mid(f"127.0.0.1:{down.port}"), None)], registry=registry,
            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, **options))
        await mid.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mid.port}") as ch:
                yield ch
        finally:
            await mid.drain()
    finally:
        await down.drain()


async def _error(ch: Any, kind: str, which: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if kind == "Unary":
            await ch.unary_unary(f"/{_MID}/Unary")(which.encode(), timeout=10)
        else:
            async for _ in ch.unary_stream(f"/{_MID}/Stream")(which.encode(), timeout=10):
                pass
    return err.value


_CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "nothing-wraps": {"telemetry": None, "deadline": None,
                      "limits": meshkit.ServerLimits(read_requests=False)},
    "exposing": {"expose_exception_text": True},
}


@pytest.mark.parametrize("kind", ["Unary", "Stream"], ids=["unary", "stream"])
@pytest.mark.parametrize("config", list(_CONFIGS), ids=list(_CONFIGS))
@pytest.mark.parametrize(("which", "downstream"), [
    ("StorageDown", "UNAVAILABLE"), ("Busy", "RESOURCE_EXHAUSTED")],
    ids=["storage-down", "busy"])
async def test_a_downstream_refusal_escaping_a_handler_does_not_blame_the_middle_tier(
        registry: LocalRegistry, config: str, kind: str, which: str,
        downstream: str) -> None:
    async with _chain(registry, **_CONFIGS[config]) as ch:
        err = await _error(ch, kind, which)
    code = err.code()
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, err.details())
    # neither counted against the middle tier nor retried by a caller's defaults
    assert code not in OutlierOptions().failure_codes
    assert code not in RetryPolicy().retryable_codes
    trailers = tuple(err.trailing_metadata() or ())
    assert ("meshkit-downstream-status", downstream) in trailers
    # the downstream's own trailers (a nack, the storage refusal) are not passed on: the
    # middle tier ran the call, and its own storage did not refuse
    keys = {k for k, _ in trailers}
    assert "meshkit-nack" not in keys and "meshkit-ratelimit-unavailable" not in keys
    details = err.details() or ""
    assert "hunter2" not in details and "10.0.0.9" not in details, details
    assert downstream in details, details


@pytest.mark.parametrize("config", ["defaults", "nothing-wraps"],
                         ids=["defaults", "nothing-wraps"])
async def test_a_downstream_status_that_is_the_middle_tiers_fault_stays_unknown(
        registry: LocalRegistry, config: str) -> None:
    """B sent C a bad request (INVALID_ARGUMENT): B's fault, answered as before."""
    async with _chain(registry, **_CONFIGS[config]) as ch:
        err = await _error(ch, "Unary", "Invalid")
    assert err.code() is grpc.StatusCode.UNKNOWN
    keys = {k for k, _ in (err.trailing_metadata() or ())}
    assert "meshkit-downstream-status" not in keys
    assert "hunter2" not in (err.details() or "")


async def test_a_code_the_handler_set_before_the_escape_wins(registry: LocalRegistry) -> None:
    """The handler's own ``set_code`` stays the answer (as grpc.aio's)."""
    down = meshkit.MeshServer("down", [(_add_down, None)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await down.start()

    async def sets(request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{down.port}") as raw:
            ch: Any = raw
            answer: bytes = await ch.unary_unary(f"/{_DOWN}/Call")(b"StorageDown", timeout=5)
            return answer

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_MID, {
            "Sets": grpc.unary_unary_rpc_method_handler(sets)}),))

    try:
        mid = meshkit.MeshServer("mid", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
        await mid.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mid.port}") as raw:
                ch: Any = raw
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/{_MID}/Sets")(b"", timeout=10)
        finally:
            await mid.drain()
    finally:
        await down.drain()
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_a_plain_function_handlers_downstream_refusal_is_answered_so_too(
        registry: LocalRegistry) -> None:
    """A plain-function handler's synchronous stub raises ``grpc.RpcError`` (a
    ``grpc.Call``), not ``AioRpcError``: answered the same way."""
    down = meshkit.MeshServer("down", [(_add_down, None)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await down.start()

    def sync_relay(request: bytes, context: Any) -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{down.port}") as raw:
            ch: Any = raw
            answer: bytes = ch.unary_unary(f"/{_DOWN}/Call")(request, timeout=5)
            return answer

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_MID, {
            "Sync": grpc.unary_unary_rpc_method_handler(sync_relay)}),))

    try:
        mid = meshkit.MeshServer("mid", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
        await mid.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{mid.port}") as raw:
                ch: Any = raw
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/{_MID}/Sync")(b"StorageDown", timeout=10)
        finally:
            await mid.drain()
    finally:
        await down.drain()
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert ("meshkit-downstream-status", "UNAVAILABLE") in tuple(
        err.value.trailing_metadata() or ())
    assert "hunter2" not in (err.value.details() or "")
