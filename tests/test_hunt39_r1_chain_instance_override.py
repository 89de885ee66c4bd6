"""A wrapper set on one of meshkit's own client interceptors' instance (``intercept_unary``
assigned on the instance: ``unittest.mock.patch.object``, an application's instrumentation)
before ``dial()`` ran for every unary call, as the chain bound ``icpt.intercept_unary``;
since 19d142e (the chain calls meshkit's ``unary_runner(proceed)`` directly, a frame fewer
per call) it was skipped without a word. The chain now takes the runner only when the
instance does not override ``intercept_unary``; a subclass's override runs too."""

from __future__ import annotations

from typing import Any

import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientCallDetails, UnaryProceed
from meshkit.observability import TelemetryClientInterceptor
from meshkit.resilience import RetryInterceptor, RetryOptions
from tests.support.echo import handler, method, raw_server

pytestmark = pytest.mark.timeout(60)


def _retry() -> Any:
    return RetryInterceptor(RetryOptions())


def _telemetry() -> Any:
    return TelemetryClientInterceptor()


class _SubRetry(RetryInterceptor):
    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: UnaryProceed) -> Any:
        self.seen = [*getattr(self, "seen", []), details.method]
        return await super().intercept_unary(details, request, proceed)


@pytest.mark.parametrize(("make", "option"), [(_retry, "retry"), (_telemetry, "telemetry")],
                         ids=["retry", "telemetry"])
async def test_an_instance_override_of_a_meshkit_interceptor_runs(
        registry: LocalRegistry, make: Any, option: str) -> None:
    icpt = make()
    original = icpt.intercept_unary
    seen: list[str] = []

    async def wrapped(details: ClientCallDetails, request: Any, proceed: UnaryProceed) -> Any:
        seen.append(details.method)
        return await original(details, request, proceed)

    icpt.intercept_unary = wrapped  # as mock.patch.object(icpt, "intercept_unary", ...)
    async with raw_server(handler("e1")) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1",
                                         port=port))
        opts = meshkit.DialOptions(insecure=True, interceptors=(icpt,), **{option: None})
        async with meshkit.dial("s", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert await ch.unary_unary(method("Unary"))(b"q", timeout=10) == b"e1|q"
            assert await ch.unary_unary(method("Unary"))(b"r", timeout=10) == b"e1|r"
    assert seen == [method("Unary")] * 2


async def test_a_subclass_override_of_a_meshkit_interceptor_runs(
        registry: LocalRegistry) -> None:
    icpt = _SubRetry(RetryOptions())
    async with raw_server(handler("e1")) as (_, port):
        await registry.register(Instance(service="s", instance_id="a", host="127.0.0.1",
                                         port=port))
        opts = meshkit.DialOptions(insecure=True, interceptors=(icpt,), retry=None)
        async with meshkit.dial("s", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            assert await ch.unary_unary(method("Unary"))(b"q", timeout=10) == b"e1|q"
    assert icpt.seen == [method("Unary")]
