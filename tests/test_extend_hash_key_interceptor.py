"""``DialOptions.hash_key_metadata`` with per-call ``interceptors``: the affinity key
is read from the metadata as the interceptors leave it.

A stamping interceptor (the caller's tenant or user put on every call, the usual place
for it) added the key's header after the channel had read the call's key from the
caller's metadata only, so ``RingHash`` got no key and spread one user's calls over every
endpoint (measured: 30 calls stamped ``x-user: alice`` over three endpoints reached all
three; the same header passed by the caller reached one). grpc-go's ring hash reads its
``request_hash_header`` at the pick (gRFC A76), after the interceptors. Real servers on
loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RingHash
from meshkit.discovery import LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor

_SVC = "meshkit.test.Affinity"
_IDS = ("h1", "h2", "h3")


def _add(instance_id: str) -> tuple[Any, None]:
    async def who(request: bytes, context: Any) -> bytes:
        return instance_id.encode()

    async def who_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield instance_id.encode()

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "WhoStream": grpc.unary_stream_rpc_method_handler(who_stream),
    })
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _Stamp(ClientInterceptor):
    """Puts ``x-user: <user>`` on every call (unary and streaming)."""

    def __init__(self, user: str) -> None:
        self.user = user

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        details.metadata.append(("x-user", self.user))
        return await proceed(details, request)

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: Any) -> Any:
        details.metadata.append(("x-user", self.user))
        return await proceed(details, request)


class _Key(ClientInterceptor):
    """Sets ``request_key`` itself."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        details.request_key = self.key
        return await proceed(details, request)


@pytest.fixture
async def servers(registry: LocalRegistry) -> AsyncIterator[None]:
    started = []
    try:
        for instance_id in _IDS:
            srv = meshkit.MeshServer("affinityd", [_add(instance_id)], registry=registry,
                                     options=meshkit.ServeOptions(
                                         insecure=True, instance_id=instance_id,
                                         drain_delay_s=0.0, admin=None))
            await srv.start()
            started.append(srv)
        yield None
    finally:
        await asyncio.gather(*(srv.drain() for srv in started))


async def _reached(ch: meshkit.MeshChannel, kind: str, n: int = 30,
                   metadata: Any = None) -> set[bytes]:
    seen = set()
    for _ in range(n):
        if kind == "unary":
            seen.add(await ch.unary_unary(f"/{_SVC}/Who")(b"", timeout=5, metadata=metadata))
        else:
            call = ch.unary_stream(f"/{_SVC}/WhoStream")(b"", timeout=5, metadata=metadata)
            seen.update([m async for m in call])
    return seen


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_a_key_an_interceptor_stamps_keeps_the_calls_on_one_endpoint(
        registry: LocalRegistry, servers: None, kind: str) -> None:
    opts = meshkit.DialOptions(insecure=True, balancer=RingHash, hash_key_metadata="x-user",
                               interceptors=(_Stamp("alice"),))
    async with meshkit.dial("affinityd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(3)
        async with asyncio.timeout(10):
            reached = await _reached(ch, kind)
    assert len(reached) == 1, reached


async def test_the_callers_key_and_an_interceptors_request_key(
        registry: LocalRegistry, servers: None) -> None:
    """With interceptors that leave the header alone the caller's key still holds; a
    ``request_key`` an interceptor sets wins over the header."""
    opts = meshkit.DialOptions(insecure=True, balancer=RingHash, hash_key_metadata="x-user",
                               interceptors=(ClientInterceptor(),))
    async with meshkit.dial("affinityd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(3)
        async with asyncio.timeout(10):
            by_user = {user: await _reached(ch, "unary", 10, (("x-user", user),))
                       for user in ("alice", "bob", "carol", "dave", "erin")}
    assert all(len(reached) == 1 for reached in by_user.values()), by_user
    # the key each user's header gives, set by an interceptor instead, reaches the same
    for user, reached in by_user.items():
        opts = meshkit.DialOptions(insecure=True, balancer=RingHash,
                                   hash_key_metadata="x-user", interceptors=(_Key(user),))
        async with meshkit.dial("affinityd", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(3)
            async with asyncio.timeout(10):
                assert await _reached(ch, "unary", 5, (("x-user", "zed"),)) == reached


class _Rewrite(ClientInterceptor):
    """Replaces the caller's ``x-user`` header with its own value."""

    def __init__(self, user: str) -> None:
        self.user = user

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        details.metadata = [(k, v) for k, v in details.metadata if k != "x-user"]
        details.metadata.append(("x-user", self.user))
        return await proceed(details, request)


async def test_a_key_an_interceptor_changes_is_the_one_picked_by(
        registry: LocalRegistry, servers: None) -> None:
    """Callers' differing headers, each rewritten to one user by the interceptor, reach
    one endpoint (the header as sent, not as the caller passed it)."""
    opts = meshkit.DialOptions(insecure=True, balancer=RingHash, hash_key_metadata="x-user",
                               interceptors=(_Rewrite("alice"),))
    async with meshkit.dial("affinityd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(3)
        seen = set()
        async with asyncio.timeout(10):
            for i in range(30):
                seen.add(await ch.unary_unary(f"/{_SVC}/Who")(
                    b"", timeout=5, metadata=(("x-user", f"caller-{i}"),)))
    assert len(seen) == 1, seen
