"""A filter of ``DialOptions.filters`` that raises is the filter's failure, not
discovery's: the channel logs it once (naming the error), keeps its last endpoints,
and a call with none fails ``UNAVAILABLE`` at once saying a filter failed, rather than
restarting the registry watch again and again ("discovery watch failed", logged at each
restart) and failing calls after ``resolve_timeout_s`` with "no discovery answer"
although the registry answered."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until


class _Broken:
    """A filter that raises, with a message that must stay out of the status."""

    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        raise KeyError("secret-ish detail")

    def __repr__(self) -> str:
        return "Broken()"


async def _registered(registry: LocalRegistry, n: int) -> None:
    async def enough() -> bool:
        return len(await registry.instances("echo")) == n

    await until(enough, timeout_s=10, what=f"{n} instance(s) registered")


async def test_a_filter_that_raises_fails_calls_at_once_naming_the_filter(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """resolve_timeout_s 30 s: the call fails UNAVAILABLE well before, its message names
    the filter and the error's type (not its text); the failure is logged once, as the
    filter's, with the error, however many discovery answers come meanwhile."""
    await echo_servers("a")
    await _registered(registry, 1)
    opts = meshkit.DialOptions(insecure=True, filters=(_Broken(),), resolve_timeout_s=30.0)
    with structlog.testing.capture_logs() as logs:
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            unary = ch.unary_unary(method("Unary"))
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"", timeout=60)
            took = time.monotonic() - t0
            await echo_servers("b")  # another discovery answer, the filter fails again
            await _registered(registry, 2)
            await until(lambda: sum("filter" in str(e.get("event")) for e in logs) >= 1,
                        timeout_s=5, what="the filter's failure logged")
            with pytest.raises(grpc.aio.AioRpcError):
                await unary(b"", timeout=60)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    details = info.value.details() or ""
    assert took < 15.0, (took, details)
    assert "no discovery answer" not in details, details
    assert "Broken()" in details and "KeyError" in details, details
    assert "secret-ish" not in details, details
    # the failed calls' own access lines (event "rpc", a warning for UNAVAILABLE) aside
    warnings = [e for e in logs if e.get("log_level") in ("warning", "error")
                and "plaintext" not in str(e.get("event")) and e.get("event") != "rpc"]
    assert [e["event"] for e in warnings] == [
        "endpoint filter failed; keeping last endpoints"], warnings
    assert "secret-ish detail" in warnings[0]["error"]


async def test_a_filter_that_starts_raising_keeps_the_last_endpoints(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """The filter works for the first answer and raises from the next one on: calls
    go on to the endpoints it last chose."""
    chosen: list[int] = []

    def flaky(instances: Sequence[Instance]) -> list[Instance]:
        if chosen:
            raise ValueError("broken after the first answer")
        chosen.append(len(instances))
        return list(instances)

    await echo_servers("a")
    await _registered(registry, 1)
    opts = meshkit.DialOptions(insecure=True, filters=(flaky,))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        assert (await unary(b"", timeout=10)).startswith(b"a|")
        await echo_servers("b")  # a new answer: the filter raises
        await _registered(registry, 2)
        for _ in range(20):
            assert (await unary(b"", timeout=10)).startswith(b"a|")
