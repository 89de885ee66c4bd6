"""LocalRegistry: bookkeeping with an injected clock, and watches on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry, registry_from_uri
from meshkit.errors import ConfigError


def inst(i: str, service: str = "svc", **kw: object) -> Instance:
    """An instance ``i`` of ``service`` on a distinct port."""
    return Instance(service=service, instance_id=i, host="127.0.0.1",
                    port=20000 + sum(map(ord, i)), **kw)  # type: ignore[arg-type]


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_register_roundtrips_all_fields(tmp_path: Path) -> None:
    """Tags, meta and weight come back from the registry as registered."""
    reg = LocalRegistry(LocalOptions(path=tmp_path))
    try:
        a = inst("a", tags=("v2", "canary"), meta={"zone": "z1", "version": "2"}, weight=3)
        await reg.register(a)
        (got,) = await reg.instances("svc")
        assert got == a and got.meta == {"zone": "z1", "version": "2"}
        assert await reg.instances("other") == frozenset()
    finally:
        await reg.close()


async def test_entry_expires_after_ttl_without_heartbeat(tmp_path: Path) -> None:
    """An instance whose heartbeats stop disappears once its TTL passes."""
    clock = FakeClock()
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=2.9,
                                     clock=clock))
    try:
        await reg.register(inst("a"))
        clock.now += 2.9
        assert len(await reg.instances("svc")) == 1
        clock.now += 0.2
        assert await reg.instances("svc") == frozenset()
    finally:
        await reg.close()


async def test_heartbeat_keeps_entry_alive(tmp_path: Path) -> None:
    """Heartbeats keep renewing the TTL."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.3, poll_interval_s=0.05))
    try:
        await reg.register(inst("a"))
        for _ in range(8):  # 0.8 s, well past several TTLs
            await asyncio.sleep(0.1)
            assert len(await reg.instances("svc")) == 1
    finally:
        await reg.close()


async def test_watch_yields_initial_set_then_changes(tmp_path: Path) -> None:
    """A watch yields the current set first, then each change, across registry objects."""
    opts = LocalOptions(path=tmp_path, ttl_s=2, poll_interval_s=0.02)
    writer, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await writer.register(inst("a"))
        w = reader.watch("svc")
        assert {i.instance_id for i in await anext(w)} == {"a"}
        await writer.register(inst("b"))
        assert {i.instance_id for i in await asyncio.wait_for(anext(w), 2)} == {"a", "b"}
        await writer.deregister(inst("a"))
        assert {i.instance_id for i in await asyncio.wait_for(anext(w), 2)} == {"b"}
        await w.aclose()
    finally:
        await writer.close()
        await reader.close()


async def test_reregister_replaces_address(tmp_path: Path) -> None:
    """Registering the same instance id again replaces its record."""
    reg = LocalRegistry(LocalOptions(path=tmp_path))
    try:
        await reg.register(inst("a"))
        moved = Instance(service="svc", instance_id="a", host="127.0.0.2", port=999)
        await reg.register(moved)
        assert await reg.instances("svc") == frozenset({moved})
    finally:
        await reg.close()


def test_bad_options_quote_the_value(tmp_path: Path) -> None:
    """Out-of-range options fail at construction with the bad value in the message."""
    with pytest.raises(ConfigError, match="-1"):
        LocalOptions(path=tmp_path, ttl_s=-1)
    with pytest.raises(ConfigError, match="5"):
        LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=5)
    with pytest.raises(ConfigError, match="0"):
        LocalOptions(path=tmp_path, poll_interval_s=0)


def test_bad_instances_are_refused() -> None:
    """Invalid instance fields fail with the value quoted."""
    with pytest.raises(ConfigError, match="'bad name'"):
        Instance(service="bad name", instance_id="x", host="h", port=1)
    with pytest.raises(ConfigError, match="70000"):
        Instance(service="s", instance_id="x", host="h", port=70000)
    with pytest.raises(ConfigError, match="weight"):
        Instance(service="s", instance_id="x", host="h", port=1, weight=0)
    assert Instance(service="s", instance_id="x", host="::1", port=5).address == "[::1]:5"


def test_registry_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """local:// URIs build a LocalRegistry with options; unknown schemes are refused."""
    reg = registry_from_uri(f"local://{tmp_path}?ttl_s=5&poll_interval_s=0.1")
    assert isinstance(reg, LocalRegistry)
    assert reg.options.path == tmp_path / "registry.db"
    assert reg.options.ttl_s == 5.0
    assert isinstance(registry_from_uri(f"local://{tmp_path}/x.db"), LocalRegistry)
    with pytest.raises(ConfigError, match="etcd://x"):
        registry_from_uri("etcd://x")
    with pytest.raises(ConfigError, match="ttl_s"):
        registry_from_uri(f"local://{tmp_path}?ttl_s=abc")
    with pytest.raises(ConfigError, match="bogus"):
        registry_from_uri(f"local://{tmp_path}?bogus=1")
    from meshkit.discovery import registry_from_env

    monkeypatch.setenv("MESHKIT_REGISTRY", f"local://{tmp_path}/env")
    env_reg = registry_from_env()
    assert isinstance(env_reg, LocalRegistry)
    assert env_reg.options.path == tmp_path / "env" / "registry.db"
