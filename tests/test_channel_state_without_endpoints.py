"""The connectivity a balanced channel reports while it has no endpoint (meshkit/channel.py,
``MeshChannel.get_state``), as gRPC's.

A channel whose discovery answered with no instance (none registered, or the filters kept
none), or whose registry reports that it cannot be read, fails its calls ``UNAVAILABLE``
at once, and gRPC's channel reports such a resolver answer (an empty address list, a
resolver error) as TRANSIENT_FAILURE; meshkit read IDLE, the state of a healthy channel
with nothing to do, so a health check or dashboard reading ``get_state()`` (or
``stats().state``) took a service with no instance for fine. It reads TRANSIENT_FAILURE
now, and IDLE only before the first discovery answer. Instances arriving later bring it
to READY (``wait_for_state_change`` wakes). Real local registry and grpc.aio server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.echo import handler, raw_server
from tests.support.wait import until

_TF = grpc.ChannelConnectivity.TRANSIENT_FAILURE


async def test_no_instance_registered_reads_transient_failure_then_ready(
        registry: LocalRegistry) -> None:
    ch = meshkit.dial("nobody", registry=registry,
                      options=meshkit.DialOptions(insecure=True))
    try:
        await asyncio.wait_for(ch._pool.resolved.wait(), 5)
        assert ch.get_state() is _TF  # IDLE before
        assert ch.stats().state == "TRANSIENT_FAILURE"
        async with raw_server(handler("e1")) as (_, port):
            await registry.register(Instance(service="nobody", instance_id="e1",
                                             host="127.0.0.1", port=port))
            await asyncio.wait_for(ch.wait_for_state_change(_TF), 5)
            await asyncio.wait_for(ch.channel_ready(), 5)
    finally:
        await ch.close()


async def test_an_unreadable_registry_reads_transient_failure(tmp_path: Path) -> None:
    (tmp_path / "registry.db").write_bytes(b"this is not a database\n" * 200)
    registry = LocalRegistry(LocalOptions(path=tmp_path, poll_interval_s=0.02))
    try:
        async with meshkit.dial("svc", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await until(lambda: registry.status().readable is False, timeout_s=5,
                        what="registry unreadable")
            assert ch.get_state() is _TF  # IDLE before
    finally:
        await registry.close()


async def test_a_state_watch_wakes_when_the_registry_turns_unreadable() -> None:
    """Before a first discovery answer, wait_for_state_change(IDLE) returns once the
    registry reports it cannot be read (the state is TRANSIENT_FAILURE then), though
    nothing in the pool changed."""

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
        assert ch.get_state() is grpc.ChannelConnectivity.IDLE
        watching = asyncio.ensure_future(
            ch.wait_for_state_change(grpc.ChannelConnectivity.IDLE))
        await asyncio.sleep(0.1)
        assert not watching.done()
        registry.readable = False
        await asyncio.wait_for(watching, 5)  # TimeoutError before
        assert ch.get_state() is _TF
