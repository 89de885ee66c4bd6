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
