"""``meshkit certs`` writes its keys and certificates durably: each file's data reaches
the disk (``fsync``) before its name does (``link``/``replace``), and the directory's
entry after, so a power loss right after ``certs init`` cannot leave a ``ca.key`` of
zero bytes behind (ext4's delayed allocation commits the new name first)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.auth._certs import init_ca_dir, issue_into_dir

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                                reason="names an fd's file through /proc (Linux)")


def test_each_file_is_synced_before_it_is_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No file was synced: ``os.fsync`` was never called."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("name", str(dst)))
        real_link(src, dst)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("name", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain="meshkit.local")
    issue_into_dir(d, "orderd", ttl_h=1)
    issue_into_dir(d, "orderd", ttl_h=1, overwrite=True)  # renewal: os.replace
    named = [path for kind, path in events if kind == "name"]
    assert {Path(p).name for p in named} >= {"ca.key", "ca.pem", "orderd.key", "orderd.pem"}
    for k, (kind, path) in enumerate(events):
        if kind != "name":
            continue
        synced_before = [p for kd, p in events[:k] if kd == "fsync"]
        assert any(Path(p).name.startswith(f".{Path(path).name}.") for p in synced_before), \
            (path, events)
        synced_after = [p for kd, p in events[k + 1:] if kd == "fsync"]
        assert str(Path(path).parent) in synced_after, (path, events)
