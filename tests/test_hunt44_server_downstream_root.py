"""The trailer ``meshkit-downstream-status`` names the root refusal of a chain.

A -> B -> C, three real meshkit servers: C refuses (``UNAVAILABLE``: down, or its
rate-limit storage down; ``RESOURCE_EXHAUSTED``: busy), B's handler lets the error
escape and B answers ``RESOURCE_EXHAUSTED`` with ``meshkit-downstream-status: <C's
code>``. A's handler lets B's error escape too: A answered ``RESOURCE_EXHAUSTED`` with
``meshkit-downstream-status: RESOURCE_EXHAUSTED`` (B's code), so the first caller lost
that C was down. A now carries B's trailer on: the trailer names the root refusal.
The key itself is exported as ``meshkit.DOWNSTREAM_STATUS_KEY``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry

_SVC = "hunt44.Tier"


def _adding(call: Any) -> Any:
    """A MeshServer service adder: ``call`` as the unary method ``Call`` of ``_SVC``."""

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, {
            "Call": grpc.unary_unary_rpc_method_handler(call)}),))

    return add


def _add_leaf(code: grpc.StatusCode) -> Any:
    async def call(request: bytes, context: Any) -> bytes:
        await context.abort(code, "leaf refused")
        raise AssertionError("unreachable")

    return _adding(call)


def _add_middle(target: str) -> Any:
    async def call(request: bytes, context: Any) -> bytes:
        async with grpc.aio.insecure_channel(target) as raw:
            ch: Any = raw
            answer: bytes = await ch.unary_unary(f"/{_SVC}/Call")(request, timeout=10)
            return answer

    return _adding(call)


@contextlib.asynccontextmanager
async def _server(registry: LocalRegistry, name: str, add: Any,
                  **options: Any) -> AsyncIterator[meshkit.MeshServer]:
    server = meshkit.MeshServer(name, [(add, None)], registry=registry,
                                options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                             **options))
    await server.start()
    try:
        yield server
    finally:
        await server.drain()


async def _three_tiers(registry: LocalRegistry, leaf: grpc.StatusCode,
                       **options: Any) -> grpc.aio.AioRpcError:
    async with _server(registry, "tier-c", _add_leaf(leaf)) as c, \
            _server(registry, "tier-b", _add_middle(f"127.0.0.1:{c.port}"), **options) as b, \
            _server(registry, "tier-a", _add_middle(f"127.0.0.1:{b.port}"), **options) as a, \
            grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as raw:
        ch: Any = raw
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary(f"/{_SVC}/Call")(b"x", timeout=10), 30)
    return err.value


def test_the_trailer_key_is_exported() -> None:
    """``meshkit.DOWNSTREAM_STATUS_KEY`` is the trailer's key and a curated export."""
    assert "DOWNSTREAM_STATUS_KEY" in meshkit.__all__
    assert meshkit.DOWNSTREAM_STATUS_KEY == "meshkit-downstream-status"
    from meshkit import DOWNSTREAM_STATUS_KEY
    assert DOWNSTREAM_STATUS_KEY == "meshkit-downstream-status"


@pytest.mark.parametrize("config", [{}, {"expose_exception_text": True}],
                         ids=["defaults", "exposing"])
@pytest.mark.parametrize("leaf", [grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED],
                         ids=["leaf-unavailable", "leaf-exhausted"])
async def test_three_tiers_name_the_root_refusal(registry: LocalRegistry,
                                                 leaf: grpc.StatusCode,
                                                 config: dict[str, Any]) -> None:
    """A's answer carries C's refusal code in the trailer, not B's RESOURCE_EXHAUSTED."""
    err = await _three_tiers(registry, leaf, **config)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    trailers = tuple(err.trailing_metadata() or ())
    values = [v for k, v in trailers if k == meshkit.DOWNSTREAM_STATUS_KEY]
    assert values == [leaf.name], trailers
    assert leaf.name in (err.details() or ""), err.details()


async def test_a_forged_trailer_value_is_not_carried_on(registry: LocalRegistry) -> None:
    """A downstream's trailer naming no refusal code (here ``INTERNAL``) is not taken: the
    trailer names the downstream's own code, as before."""

    async def forged(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                            trailing_metadata=((meshkit.DOWNSTREAM_STATUS_KEY, "INTERNAL"),))
        raise AssertionError("unreachable")

    async with _server(registry, "tier-c", _adding(forged)) as c, \
            _server(registry, "tier-b", _add_middle(f"127.0.0.1:{c.port}")) as b, \
            grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as raw:
        ch: Any = raw
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary(f"/{_SVC}/Call")(b"x", timeout=10), 30)
    trailers = tuple(err.value.trailing_metadata() or ())
    values = [v for k, v in trailers if k == meshkit.DOWNSTREAM_STATUS_KEY]
    assert values == ["RESOURCE_EXHAUSTED"], trailers


def _add_mesh_middle(registry: LocalRegistry, downstream: str) -> Any:
    """A middle tier whose handler calls ``downstream`` through a meshkit channel (the
    error it lets escape is a ``MeshRpcError``, its trailers kept)."""

    async def call(request: bytes, context: Any) -> bytes:
        async with meshkit.dial(downstream, registry=registry,
                                options=meshkit.DialOptions(insecure=True,
                                                            telemetry=None)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            answer: bytes = await ch.unary_unary(f"/{_SVC}/Call")(request, timeout=10)
            return answer

    return _adding(call)


async def test_three_tiers_over_mesh_channels_name_the_root_refusal(
        registry: LocalRegistry) -> None:
    """The same chain with each tier calling the next through ``meshkit.dial``."""
    async with _server(registry, "tier-c", _add_leaf(grpc.StatusCode.UNAVAILABLE)), \
            _server(registry, "tier-b", _add_mesh_middle(registry, "tier-c")), \
            _server(registry, "tier-a", _add_mesh_middle(registry, "tier-b")) as a, \
            grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as raw:
        ch: Any = raw
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary(f"/{_SVC}/Call")(b"x", timeout=20), 40)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    trailers = tuple(err.value.trailing_metadata() or ())
    values = [v for k, v in trailers if k == meshkit.DOWNSTREAM_STATUS_KEY]
    assert values == ["UNAVAILABLE"], trailers
