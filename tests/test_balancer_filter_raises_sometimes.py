"""A DialOptions.filters filter that raises on some discovery answers only: when it runs
through again the channel forgets its failure (a call that then finds no endpoint says
the filters kept none, not that a filter raised), its endpoints are the filter's choice
again, and a later failure is logged again (once per spell of failures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until


class _Moody:
    """A filter that raises, keeps nothing, or keeps everything, as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "raise"
        self.runs = 0

    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        self.runs += 1
        if self.mode == "raise":
            raise ValueError("moody")
        return [] if self.mode == "none" else list(instances)

    def __repr__(self) -> str:
        return "Moody()"


@pytest.mark.timeout(60)
async def test_a_filter_that_raises_then_runs_again_is_no_longer_named(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    moody = _Moody()
    await echo_servers("a")
    opts = meshkit.DialOptions(insecure=True, filters=(moody,), resolve_timeout_s=30.0)
    with structlog.testing.capture_logs() as logs:
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            unary: Any = ch.unary_unary(method("Unary"))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await unary(b"", timeout=20)
            # the filter runs through, keeping nothing: the status says so
            moody.mode = "none"
            runs = moody.runs
            await echo_servers("b")
            await until(lambda: moody.runs > runs, timeout_s=10, what="a new answer")
            with pytest.raises(grpc.aio.AioRpcError) as none_kept:
                await unary(b"", timeout=20)
            # it keeps everything: calls are answered
            moody.mode = "all"
            runs = moody.runs
            await echo_servers("c")
            await until(lambda: moody.runs > runs, timeout_s=10, what="a new answer")
            await ch.wait_for_endpoints(3)
            assert (await unary(b"", timeout=10))[:2] in (b"a|", b"b|", b"c|")
            # it raises again: logged again, the last endpoints kept
            moody.mode = "raise"
            runs = moody.runs
            await echo_servers("d")
            await until(lambda: moody.runs > runs, timeout_s=10, what="a new answer")
            assert (await unary(b"", timeout=10))[:2] in (b"a|", b"b|", b"c|")
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "Moody() raised ValueError" in (raised.value.details() or "")
    details = none_kept.value.details() or ""
    assert none_kept.value.code() is grpc.StatusCode.UNAVAILABLE, none_kept.value
    assert "raised" not in details, details
    assert "none kept by the filters (Moody())" in details, details
    failures = [e for e in logs
                if e.get("event") == "endpoint filter failed; keeping last endpoints"]
    assert len(failures) == 2, failures
