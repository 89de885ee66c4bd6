"""A channel whose filters leave none of the registered instances says so: its calls fail
``UNAVAILABLE`` naming the filters, not "no endpoint is registered" (which sends an
operator looking for a registration problem while the instances are there)."""

from __future__ import annotations

import grpc
import pytest

import meshkit
from meshkit.balancer import Subset
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method
from tests.support.wait import until


async def test_a_subset_matching_no_registered_instance_is_named_in_the_status(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Two instances registered (version v1), a Subset asking for v3: the call fails
    UNAVAILABLE saying the 2 registered instances were filtered out, by which filter."""
    await echo_servers("a", meta={"version": "v1"})
    await echo_servers("b", meta={"version": "v1"})
    async def both() -> bool:
        return len(await registry.instances("echo")) == 2

    await until(both, timeout_s=10, what="both instances registered")
    opts = meshkit.DialOptions(insecure=True, filters=(Subset(meta={"version": "v3"}),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        unary = ch.unary_unary(method("Unary"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"", timeout=10)
    err = info.value
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    details = err.details() or ""
    assert "no endpoint is registered" not in details, details
    assert "2 registered" in details, details
    assert "version" in details and "v3" in details, details



async def test_wait_for_ready_names_the_filters_when_its_deadline_ends_the_wait(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """With wait_for_ready the call waits out its deadline (DEADLINE_EXCEEDED, as gRPC's
    wait-for-ready), and its message says the filters left none of the registered ones."""
    await echo_servers("a", meta={"version": "v1"})

    async def registered() -> bool:
        return len(await registry.instances("echo")) == 1

    await until(registered, timeout_s=10, what="the instance registered")
    opts = meshkit.DialOptions(insecure=True, filters=(Subset(meta={"version": "v3"}),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        unary = ch.unary_unary(method("Unary"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"", timeout=1.0, wait_for_ready=True)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    details = info.value.details() or ""
    assert "1 registered instance(s), none kept by the filters" in details, details
    assert "'v3'" in details, details
