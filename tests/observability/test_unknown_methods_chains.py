"""Calls of unknown methods through a chain grpc.aio runs per call (gRFC A66 records).

:mod:`tests.observability.test_unknown_methods` checks what is recorded and answered; this
module checks the two guards of the per-call chain that none of those tests needed
(mutation review of fa7ba57): meshkit's answer to an unknown method is made per call and
marked, so that

* the outermost interceptor (``_OffLoopOutermost``), which caches a handler per method
  name, keeps none for it: a scanner's names (each up to grpc core's 8 KiB header limit)
  would fill that cache with 4,096 of them and their handlers;
* an outer :class:`~meshkit._handlers.WrappingInterceptor` given an inner one's answer
  (a user's own :class:`TelemetryServerInterceptor` after a plain interceptor of theirs)
  runs no check on it and caches nothing: an unauthenticated caller of an unknown method
  is still answered ``UNIMPLEMENTED`` "Method not found!", as grpc.aio answers it.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.auth import AuthOptions
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.observability._server import TelemetryServerInterceptor
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

_NOT_FOUND = "Method not found!"


class _PassThrough(grpc.aio.ServerInterceptor):
    """A user's interceptor that only passes calls on (grpc.aio runs the chain per call)."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


class _NoTokens:
    """A verifier no token passes (a caller without one never reaches it)."""

    async def verify(self, token: str) -> Any:
        raise ValueError("no token is good")


def _unknown_handled(prom: CollectorRegistry) -> float | None:
    return prom.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unknown", "grpc_service": "other", "grpc_method": "other",
        "grpc_code": "Unimplemented"})


@contextlib.asynccontextmanager
async def _server(registry: LocalRegistry, **options: Any) -> AsyncIterator[
        grpc.aio.Channel]:
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=1.0, **options))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            yield ch
    finally:
        await srv.drain()


async def _flood(ch: grpc.aio.Channel, mark: str, n: int) -> None:
    """``n`` calls of distinct unknown methods whose names hold ``mark``, half unary, half
    bidi; each answered as grpc.aio answers it."""
    for i in range(n):
        name = f"/scan.{mark}{i}.{uuid.uuid4().hex}/M"
        if i % 2:
            call: Any = ch.unary_unary(name)(b"x", timeout=10)
        else:
            # no request message: one written after the answer can end the call INTERNAL
            # on grpc.aio's client (3 in 1,000 bidi calls writing 3 messages to a plain
            # grpc.aio server; under a loaded CI run, the first of these calls)
            call = ch.stream_stream(name)(iter([]), timeout=10)
        assert await call.code() is grpc.StatusCode.UNIMPLEMENTED, name
        assert await call.details() == _NOT_FOUND


def _holders(mark: str) -> list[str]:
    """The dicts, sets and lists alive that hold more than 5 strings containing ``mark``
    (the last call or two may still be in grpc's hands; a per-name cache holds them all)."""
    gc.collect()
    found = []
    for o in gc.get_objects():
        if isinstance(o, (dict, set, frozenset, list)):
            try:
                n = sum(1 for k in o if isinstance(k, str) and mark in k)
            except RuntimeError:  # changed size while counted: not a cache of ours
                continue
            if n > 5:
                found.append(f"{type(o).__name__} of {len(o)} ({n} names): "
                             f"{list(o)[:2]!r:.200}")
    return found


_N = 120


async def test_a_per_call_chain_keeps_no_unknown_name(registry: LocalRegistry) -> None:
    """A MeshServer with a user's interceptor (grpc.aio runs the chain per call, meshkit's
    outermost interceptor caching each method's handler): a flood of unknown names is
    counted, and no meshkit structure keeps the names."""
    prom = CollectorRegistry()
    mark = f"MK{uuid.uuid4().hex[:10]}"
    async with _server(registry, interceptors=(_PassThrough(),),
                       telemetry=TelemetryOptions(tracing=False, access_log=False,
                                                  registry=prom)) as ch:
        assert await ch.unary_unary(method("Unary"))(b"hi", timeout=10) == b"e1|hi"
        await _flood(ch, mark, _N)
        await until(lambda: _unknown_handled(prom) == float(_N), timeout_s=20,
                    what=f"{_N} unknown calls counted")
        assert _holders(mark) == []


async def test_a_users_own_telemetry_inside_the_checks(registry: LocalRegistry) -> None:
    """``telemetry=None`` and a TelemetryServerInterceptor of the user's own after a plain
    interceptor of theirs: meshkit's checks (auth here) are an outer interceptor that gets
    the inner telemetry's answer to an unknown method. The unauthenticated caller of an
    unknown method is answered ``UNIMPLEMENTED`` "Method not found!" (a known method:
    ``UNAUTHENTICATED``), the call is counted once as unknown, and the outer
    interceptor's per-method cache keeps no name."""
    prom = CollectorRegistry()
    mine = TelemetryServerInterceptor("echo", TelemetryOptions(tracing=False,
                                                               access_log=False,
                                                               registry=prom))
    mark = f"MK{uuid.uuid4().hex[:10]}"
    async with _server(registry, telemetry=None,
                       auth=AuthOptions(verifier=_NoTokens(), check_peers=False),
                       interceptors=(_PassThrough(), mine)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as known:
            await ch.unary_unary(method("Unary"))(b"hi", timeout=10)
        assert known.value.code() is grpc.StatusCode.UNAUTHENTICATED
        await _flood(ch, mark, _N)
        await until(lambda: _unknown_handled(prom) == float(_N), timeout_s=20,
                    what=f"{_N} unknown calls counted")
        assert _holders(mark) == []


def _users_chain(**limits: Any) -> dict[str, Any]:
    """ServeOptions whose chain is the user's alone, a plain interceptor first, then their
    own TelemetryServerInterceptor (meshkit's telemetry, deadline and answer to unhandled
    exceptions off); ``limits``: ServerLimits fields."""
    return {"telemetry": None, "deadline": None, "expose_exception_text": True,
            "limits": meshkit.ServerLimits(**limits)}


async def test_a_chain_led_by_a_users_interceptor_keeps_no_unknown_name(
        registry: LocalRegistry) -> None:
    """No request gate and no call slots: grpc.aio's outermost interceptor is the user's,
    wrapped by meshkit so that a plain handler it returns runs off the loop, which caches
    per method name. The unknown methods' answers are not kept there."""
    prom = CollectorRegistry()
    mine = TelemetryServerInterceptor("echo", TelemetryOptions(tracing=False,
                                                               access_log=False,
                                                               registry=prom))
    mark = f"MK{uuid.uuid4().hex[:10]}"
    async with _server(registry, **_users_chain(read_requests=False, max_concurrent_rpcs=None),
                       interceptors=(_PassThrough(), mine)) as ch:
        assert await ch.unary_unary(method("Unary"))(b"hi", timeout=10) == b"e1|hi"
        await _flood(ch, mark, _N)
        await until(lambda: _unknown_handled(prom) == float(_N), timeout_s=20,
                    what=f"{_N} unknown calls counted")
        assert _holders(mark) == []


async def test_a_chain_led_by_the_request_gate_keeps_no_unknown_name(
        registry: LocalRegistry) -> None:
    """The same chain with the request gate (the default limits): the gate, put in front of
    the user's interceptor, converts the handler the rest of the chain returns and caches
    it per method name; an unknown method's answer must not be kept there."""
    prom = CollectorRegistry()
    mine = TelemetryServerInterceptor("echo", TelemetryOptions(tracing=False,
                                                               access_log=False,
                                                               registry=prom))
    mark = f"MK{uuid.uuid4().hex[:10]}"
    async with _server(registry, **_users_chain(), interceptors=(_PassThrough(), mine)) as ch:
        assert await ch.unary_unary(method("Unary"))(b"hi", timeout=10) == b"e1|hi"
        await _flood(ch, mark, _N)
        await until(lambda: _unknown_handled(prom) == float(_N), timeout_s=20,
                    what=f"{_N} unknown calls counted")
        assert _holders(mark) == []
