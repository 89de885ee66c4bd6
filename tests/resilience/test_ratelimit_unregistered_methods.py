"""Made-up method names a catch-all generic handler serves share one budget per caller.

A limit that comes from a glob or from ``default_rule`` counts each method on its own
(per caller). A server whose generic handler answers any method name (a proxy, a
gateway) let a caller choose the name: each new name (``/made.Up/M0``, ``/made.Up/M1``,
...) was a fresh budget, so ``default_rule="2/minute"`` admitted every call of a caller
that changed the name each time. ``serve()`` tells the limiter what the server registered
(its methods and ``ServeOptions.generic_methods``, as telemetry's ``other`` label): a
method it did not register is counted under the rule that matched it, one budget per
rule and caller for all such names.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience.ratelimit import RateLimitOptions
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.echo import add_echo, method
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

REDIS = f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}"


def _catch_all(_servicer: Any, server: Any) -> None:
    """A generic handler serving every method name a caller sends."""

    async def answer(request: bytes, context: Any) -> bytes:
        return b"ok"

    unary = grpc.unary_unary_rpc_method_handler(answer)

    class CatchAll(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return unary

    server.add_generic_rpc_handlers((CatchAll(),))


async def _codes(port: int, names: list[str]) -> list[str]:
    got = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for name in names:
            try:
                await channel.unary_unary(name)(b"x", timeout=5)
                got.append("OK")
            except grpc.aio.AioRpcError as exc:
                got.append(exc.code().name)
    return got


def _storage(kind: str) -> str:
    if kind == "memory":
        return "memory://"
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    return REDIS


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("rules", [{}, {"made.Up/*": "2/minute"}], ids=["default", "glob"])
async def test_made_up_method_names_share_one_budget(
        registry: LocalRegistry, kind: str, rules: dict[str, str]) -> None:
    """6 made-up names from one caller under "2/minute" (the default rule, or a glob):
    2 admitted, 4 refused RESOURCE_EXHAUSTED (each was admitted before); the registered
    echo method still has its own 2."""
    options = RateLimitOptions(
        rules=rules, default_rule=None if rules else "2/minute", storage_uri=_storage(kind),
        key_prefix=f"um-{uuid.uuid4().hex}", storage_timeout_s=5)
    if rules:  # the echo service's methods: their own rule
        options = RateLimitOptions(
            rules={**rules, "meshkit.test.Echo/*": "2/minute"}, storage_uri=options.storage_uri,
            key_prefix=options.key_prefix, storage_timeout_s=5)
    server = meshkit.MeshServer(
        "catchall", [add_echo("e1"), (_catch_all, None)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                     telemetry=None, rate_limit=options))
    await server.start()
    try:
        made_up = await _codes(server.port, [f"/made.Up/M{i}" for i in range(6)])
        echo = await _codes(server.port, [method("Unary")] * 3)
    finally:
        await server.drain()
    assert made_up == ["OK", "OK"] + ["RESOURCE_EXHAUSTED"] * 4, made_up
    assert echo == ["OK", "OK", "RESOURCE_EXHAUSTED"], echo


async def test_generic_methods_keep_a_budget_each(registry: LocalRegistry) -> None:
    """Methods the application names in ``ServeOptions.generic_methods`` are registered
    ones: each keeps its own budget; other made-up names share one."""
    options = RateLimitOptions(default_rule="1/minute")
    server = meshkit.MeshServer(
        "catchall", [(_catch_all, None)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                     telemetry=None, rate_limit=options,
                                     generic_methods=("/made.Up/Known*",)))
    await server.start()
    try:
        known = await _codes(server.port, ["/made.Up/Known1", "/made.Up/Known2",
                                           "/made.Up/Known1"])
        other = await _codes(server.port, ["/made.Up/X", "/made.Up/Y"])
    finally:
        await server.drain()
    assert known == ["OK", "OK", "RESOURCE_EXHAUSTED"], known
    assert other == ["OK", "RESOURCE_EXHAUSTED"], other
