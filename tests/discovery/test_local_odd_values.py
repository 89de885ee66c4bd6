"""LocalRegistry and Instance: values at the edges (a weight past 64 bits, a foreign
writer's tags of the wrong shape, a path holding NUL). Real SQLite files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry, registry_from_uri
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_a_weight_no_registry_can_store_is_refused_at_construction() -> None:
    """A weight past a signed 64-bit integer (what SQLite, Consul's agent and etcd's
    gateway store) is a ConfigError quoting it when the Instance is built; it used to be
    accepted and make LocalRegistry.register() fail with a bare OverflowError ("Python
    int too large to convert to SQLite INTEGER"), no RegistryError."""
    Instance(service="svc", instance_id="a", host="127.0.0.1", port=1, weight=2**63 - 1)
    with pytest.raises(ConfigError, match=r"weight.*9223372036854775808"):
        Instance(service="svc", instance_id="a", host="127.0.0.1", port=1, weight=2**63)


def _foreign_row(db: Path, instance_id: str, port: int, tags: str, meta: str) -> None:
    """A row as another writer (an older meshkit, a tool) may put it: live for a minute
    on the wall clock, ``tags`` and ``meta`` as given (JSON text)."""
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    try:
        conn.execute("INSERT INTO instances (instance_id, service, host, port, tags, meta,"
                     " weight, expires_at) VALUES (?,?,?,?,?,?,?,?)",
                     (instance_id, "svc", "127.0.0.1", port, tags, meta, 1, time.time() + 60))
    finally:
        conn.close()


@pytest.mark.parametrize("tags", ['"v2"', '{"v2": 1}'], ids=["a-string", "an-object"])
async def test_a_row_whose_tags_are_no_json_list_is_skipped(tmp_path: Path, tags: str) -> None:
    """Tags stored as a JSON string or object (a foreign writer's) are no list of tags:
    the row is skipped as the module docstring says of tags "not JSON of the right
    shape", the rest listed. They were taken apart instead: '"v2"' listed the tags
    ('v', '2'), an object its keys, so a tag filter on "v2" dropped the instance."""
    reg = LocalRegistry(LocalOptions(path=tmp_path))
    try:
        good = Instance(service="svc", instance_id="good", host="127.0.0.1", port=1,
                        tags=("v2",))
        await reg.register(good)
        _foreign_row(tmp_path / "registry.db", "odd", 2, tags, "{}")
        assert await reg.instances("svc") == {good}
    finally:
        await reg.close()


@pytest.mark.parametrize("path", ["/tmp/mesh\x00/x", Path("/tmp/mesh\x00")])
def test_a_path_holding_nul_is_a_config_error(path: object) -> None:
    """A path holding NUL (given, or ``local:///tmp/mesh%00`` decoded) is a ConfigError
    quoting it; it was a bare ValueError ("embedded null byte") from os.stat."""
    with pytest.raises(ConfigError, match=r"path.*\\x00"):
        LocalOptions(path=path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"path.*\\x00"):
        registry_from_uri("local:///tmp/mesh%00")


@pytest.mark.parametrize("kwargs", [
    {"poll_interval_s": 1e-6}, {"poll_interval_s": 0.001}, {"ttl_s": 1e-6},
    {"ttl_s": 0.05}, {"heartbeat_interval_s": 1e-6}])
def test_intervals_that_make_a_busy_loop_are_refused(tmp_path: Path,
                                                     kwargs: dict[str, float]) -> None:
    """A poll interval or TTL small enough to poll or renew without pause (a typo,
    0.0025 for 0.25; a unit slip, ms for s) was taken: each watch then read the file,
    or each heartbeat wrote it, in a loop that kept a core busy (and the file's write
    lock, for every other process). A ConfigError now names the field and quotes the
    value; the floors (poll and heartbeat 0.01 s, TTL 0.1 s) are below any use."""
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        LocalOptions(path=tmp_path, **kwargs)
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ConfigError, match=name):
        registry_from_uri(f"local://{tmp_path}?{name}={value}")


def test_the_smallest_intervals_allowed(tmp_path: Path) -> None:
    opts = LocalOptions(path=tmp_path, ttl_s=0.1, poll_interval_s=0.01,
                        heartbeat_interval_s=0.01)
    assert (opts.ttl_s, opts.poll_interval_s, opts.heartbeat_interval_s) == (0.1, 0.01, 0.01)
