"""A call on a channel whose registry reports that it cannot be read fails at once
(meshkit/_pool.py, ``pick_slow``).

gRPC's wait-for-ready semantics (doc/wait-for-ready.md): an RPC without wait_for_ready
fails ``UNAVAILABLE`` as soon as the channel is in TRANSIENT_FAILURE, which a resolver
error before any address puts it in. A meshkit call that found its registry unreadable
(``status().readable`` False, no discovery answer yet) waited out ``resolve_timeout_s``
(5 s) before failing with the same ``UNAVAILABLE``. A ``wait_for_ready`` call still waits.
Real local registry on a file that is no database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(30)


async def test_a_call_on_an_unreadable_registry_fails_unavailable_at_once(
        tmp_path: Path) -> None:
    """Default resolve_timeout_s (5 s): the call ends UNAVAILABLE naming the registry's
    fault well before it (failed before: after 5 s)."""
    (tmp_path / "registry.db").write_bytes(b"this is not a database\n" * 200)
    registry = LocalRegistry(LocalOptions(path=tmp_path, poll_interval_s=0.02))
    try:
        async with meshkit.dial("svc", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            call = ch.unary_unary("/svc.Svc/Get", _registered_method=True)
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=20)
            took = time.monotonic() - start
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
            assert "cannot be read" in (err.value.details() or ""), err.value
            assert took < 3.0, took  # 5 s before
            # a second call, the fault already known: as fast
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=20)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
            assert time.monotonic() - start < 3.0
    finally:
        await registry.close()


async def test_a_wait_for_ready_call_still_waits_through_an_unreadable_registry(
        tmp_path: Path) -> None:
    """wait_for_ready: the call waits until its deadline (DEADLINE_EXCEEDED), as before."""
    (tmp_path / "registry.db").write_bytes(b"this is not a database\n" * 200)
    registry = LocalRegistry(LocalOptions(path=tmp_path, poll_interval_s=0.02))
    try:
        async with meshkit.dial("svc", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            call = ch.unary_unary("/svc.Svc/Get", _registered_method=True)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=0.5, wait_for_ready=True)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err.value
    finally:
        await registry.close()


async def test_a_call_waiting_for_discovery_ends_when_the_registry_turns_unreadable(
        tmp_path: Path) -> None:
    """A registry that has not answered yet and then reports that it cannot be read ends
    the calls waiting for its first answer (UNAVAILABLE), not resolve_timeout_s later."""

    class Silent:
        """A registry whose watch never answers; its status turns unreadable on demand."""

        def __init__(self) -> None:
            self.readable: bool | None = None

        async def watch(self, service: str):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()
            yield frozenset()

        def status(self) -> meshkit.discovery.RegistryStatus:
            return meshkit.discovery.RegistryStatus(kind="local", readable=self.readable)

        async def close(self) -> None:
            pass

    registry = Silent()
    async with meshkit.dial("svc", registry=registry,  # type: ignore[arg-type]
                            options=meshkit.DialOptions(insecure=True)) as ch:
        call = ch.unary_unary("/svc.Svc/Get", _registered_method=True)
        task = asyncio.ensure_future(call(b"", timeout=20))
        await asyncio.sleep(0.2)
        assert not task.done()
        registry.readable = False
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await task
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
        assert "cannot be read" in (err.value.details() or ""), err.value
        assert time.monotonic() - start < 3.0
