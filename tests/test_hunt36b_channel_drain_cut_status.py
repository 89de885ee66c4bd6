"""A unary call still running on an endpoint that left the registry when its
``drain_timeout_s`` is up is cut by the client, the connection taken away under it: the
call ended ``CANCELLED`` ("the channel was closed or its endpoint left"), which no retry
policy retries, so an idempotent read on a pod being scaled down failed though another
endpoint stood ready. grpc-java gives ``UNAVAILABLE`` ("InternalSubchannel closed
transport due to address change") for exactly this cut, and grpc-go ``UNAVAILABLE`` for
a connection that goes away under a call; closing the channel itself stays
``CANCELLED``."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import handler, method, raw_server
from tests.support.wait import until


def _inst(instance_id: str, port: int) -> Instance:
    return Instance(service="echo", instance_id=instance_id, host="127.0.0.1", port=port)


async def _cut(registry: LocalRegistry, retry: RetryOptions | None) -> Any:
    """A slow Unary call on e1, e1 replaced by e2 (drain 0.3 s); what the call ends with."""
    async with raw_server(handler("e1", delay_s=20)) as (_, p1), \
            raw_server(handler("e2")) as (_, p2):
        i1 = _inst("e1", p1)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=retry, drain_timeout_s=0.3)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            call = asyncio.ensure_future(ch.unary_unary(method("Unary"))(b"x", timeout=15))
            await until(lambda: any(e.in_flight for e in ch.endpoints()), what="in flight")
            await registry.register(_inst("e2", p2))
            await ch.wait_for_endpoints(2)
            await registry.deregister(i1)
            try:
                return await asyncio.wait_for(call, 10)
            except grpc.aio.AioRpcError as exc:
                return exc


async def test_a_call_cut_by_the_drain_fails_unavailable(registry: LocalRegistry) -> None:
    """Without retries the caller sees ``UNAVAILABLE``, its details naming the drain."""
    err = await _cut(registry, None)
    assert isinstance(err, grpc.aio.AioRpcError), err
    assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert "drain_timeout_s" in (err.details() or "")


@pytest.mark.timeout(30)
async def test_an_idempotent_call_cut_by_the_drain_is_retried(registry: LocalRegistry) -> None:
    """An idempotent method's call goes again, to the endpoint that stayed."""
    retry = RetryOptions(default=RetryPolicy(idempotent=True))
    assert await _cut(registry, retry) == b"e2|x"


@pytest.mark.timeout(30)
async def test_a_call_not_safe_to_repeat_is_not_sent_again(registry: LocalRegistry) -> None:
    """The request may have run on the endpoint that left: under the default policy (not
    idempotent) the call fails ``UNAVAILABLE``, not sent to the other endpoint."""
    err = await _cut(registry, RetryOptions())
    assert isinstance(err, grpc.aio.AioRpcError), err
    assert err.code() is grpc.StatusCode.UNAVAILABLE
