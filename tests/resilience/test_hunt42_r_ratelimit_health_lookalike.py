"""The health exemption covers the health service's methods, not any name under its path.

f56b7ad5 left ``grpc.health.v1.Health`` to the rules naming it (no ``default_rule``, no
catch-all glob), so that probes are never refused. It exempted every method name that
starts with ``/grpc.health.v1.Health/``, a prefix the caller writes: on a server with a
catch-all generic handler (a proxy, a gateway), a caller that sent its calls as
``/grpc.health.v1.Health/Anything`` had the handler serve them with no limit at all,
where the server counted every other made-up name under one budget per rule and caller
(``<unregistered methods>``). The exemption is now for the health service's methods
(``Check``, ``Watch``, ``List``) that the server registered; any other name is limited as
before. And a rule that exempts by a catch-all glob (``"*/Check": None``) still outranks
a package glob for the health service as for every other (the exemption kept, not turned
into the package's limit). Real meshkit servers on loopback.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience._ratelimit_policy import RuleTable
from meshkit.resilience.ratelimit import RateLimitOptions

pytestmark = pytest.mark.timeout(30)


def _catch_all(_servicer: Any, server: Any) -> None:
    """A generic handler serving every method name a caller sends (a gateway)."""

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


@pytest.mark.parametrize("suffix", ["Anything", "Check/x", "Checks"],
                         ids=["other-name", "check-subpath", "check-prefix"])
async def test_a_made_up_name_under_the_health_path_is_limited(
        registry: LocalRegistry, suffix: str) -> None:
    """Under ``default_rule="1/minute"``, 3 calls of ``/grpc.health.v1.Health/<suffix>``
    that a catch-all handler serves: 1 admitted, 2 refused (all 3 admitted before); the
    real ``Check`` still answered every time."""
    server = meshkit.MeshServer(
        "gateway", [(_catch_all, None)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                     telemetry=None,
                                     rate_limit=RateLimitOptions(default_rule="1/minute")))
    await server.start()
    try:
        lookalike = await _codes(server.port, [f"/grpc.health.v1.Health/{suffix}"] * 3)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for _ in range(3):
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    finally:
        await server.drain()
    assert lookalike == ["OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"], lookalike


def test_rule_table_exempts_only_the_health_methods() -> None:
    """A plain grpc.aio server (no ``registered``): every name is counted as it is, so
    the table itself must tell the health methods from other names under the path."""
    table = RuleTable({}, "1/minute")
    for name in ("Check", "Watch", "List"):
        assert table.lookup(f"/grpc.health.v1.Health/{name}") is None, name
    for name in ("Anything", "Check/x", "Checks", ""):
        rule = table.lookup(f"/grpc.health.v1.Health/{name}")
        assert rule is not None and rule.text == "1/minute", name


def test_an_unregistered_health_name_is_counted_under_the_shared_budget() -> None:
    """``counted_as`` is asked only for names the server did not register: a
    ``/grpc.health.v1.Health/...`` name there is none of the server's health service,
    and shares the rule's budget as other made-up names do."""
    table = RuleTable({}, "1/minute")
    assert table.counted_as("/grpc.health.v1.Health/List") == "<unregistered methods>"
    assert table.counted_as("/grpc.health.v1.Health/Anything") == "<unregistered methods>"


def test_a_catch_all_exemption_still_outranks_a_package_glob() -> None:
    """``{"grpc.*/*": "1/second", "*/Check": None}``: ``"*/Check"`` outranks the package
    glob (as many literals, fewer ``*``), so every ``Check`` was exempt before
    f56b7ad5; the health service's was then limited by the package glob."""
    table = RuleTable({"grpc.*/*": "1/second", "*/Check": None}, None)
    assert table.lookup("/grpc.health.v1.Health/Check") is None
    assert table.lookup("/other.v1.Svc/Check") is None
    watch = table.lookup("/grpc.health.v1.Health/Watch")
    assert watch is not None and watch.pattern == "grpc.*/*"
