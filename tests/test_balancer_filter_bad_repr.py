"""A DialOptions.filters filter is named in a status by its ``repr`` (fddad17, 0aaa5bb);
a filter whose ``__repr__`` itself raises (a bug of its own) must not turn a call that
finds no endpoint into a Python error, nor make the filter's failure the registry
watch's (restarted, logged as discovery's failure): it is named by its type instead."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method


class _KeepsNone:
    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        return []

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _Raises(_KeepsNone):
    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        raise ValueError("broken")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flt", "said"), [(_KeepsNone(), "none kept by the filters"),
                                           (_Raises(), "raised ValueError")])
async def test_a_filter_whose_repr_raises_is_named_by_its_type(
    registry: LocalRegistry, echo_servers: EchoFactory, flt: Any, said: str,
) -> None:
    await echo_servers("a")
    opts = meshkit.DialOptions(insecure=True, filters=(flt,), resolve_timeout_s=30.0)
    with structlog.testing.capture_logs() as logs:
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            unary: Any = ch.unary_unary(method("Unary"))
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"", timeout=40)
            took = time.monotonic() - t0
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
    details = info.value.details() or ""
    assert said in details and type(flt).__name__ in details, details
    assert took < 15.0, (took, details)
    assert not [e for e in logs if "discovery watch failed" in str(e.get("event"))], logs
