"""``KeySet.from_directory`` says which ``jwt-*.key`` entry it skipped (review of e0455193).

A dangling key link is skipped (a Kubernetes Secret mount mid-swap leaves one for a
moment), and the next older key loads in its place, or, with only dangling links, a new
key is created. Silently, that hid a lasting misconfiguration (a link to a key file that
is not there, a mount missing its target) for ever: the service signed with an older key,
or a fresh one, and nothing said why. Each skip is now a warning naming the file (its
path, never any content).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meshkit.auth import KeySet, SigningKey

pytestmark = pytest.mark.timeout(30)

GONE = "jwt-29991231T235959.000000Z-gone.key"


def _skips(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e.get("log_level") == "warning"
            and "skipped" in str(e.get("event"))]


@pytest.mark.parametrize("name", [GONE, "jwt-old-style.key"], ids=["stamped", "unstamped"])
def test_a_dangling_key_link_skipped_is_logged_with_its_path(tmp_path: Path,
                                                            name: str) -> None:
    good = KeySet.rotate_directory(tmp_path)
    os.symlink(tmp_path / "..data" / name, tmp_path / name)
    with capture_logs() as logs:
        keys = KeySet.from_directory(tmp_path, create=False, keep_previous=0)
    assert [k.kid for k in keys.keys] == [SigningKey.from_pem(good.read_bytes()).kid]
    skips = _skips(logs)
    assert len(skips) == 1, logs
    assert skips[0]["file"] == str(tmp_path / name)


def test_a_key_file_gone_after_the_listing_is_logged(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    good = KeySet.rotate_directory(tmp_path)
    gone = tmp_path / GONE
    monkeypatch.setattr(KeySet, "_key_files", staticmethod(lambda d: [gone, good]))
    with capture_logs() as logs:
        KeySet.from_directory(tmp_path, create=False, keep_previous=0)
    skips = _skips(logs)
    assert len(skips) == 1, logs
    assert skips[0]["file"] == str(gone)


def test_only_dangling_links_then_a_new_key_is_logged(tmp_path: Path) -> None:
    os.symlink(tmp_path / "..data" / GONE, tmp_path / GONE)
    with capture_logs() as logs:
        KeySet.from_directory(tmp_path)
    assert [e["file"] for e in _skips(logs)] == [str(tmp_path / GONE)] * len(_skips(logs))
    assert _skips(logs)


def test_a_plain_directory_logs_no_skip(tmp_path: Path) -> None:
    KeySet.rotate_directory(tmp_path)
    with capture_logs() as logs:
        KeySet.from_directory(tmp_path, create=False)
    assert _skips(logs) == []


@pytest.mark.parametrize("name", ["jwt-29991231T235959.000000Z-loop.key", "jwt-loop.key"],
                         ids=["stamped", "unstamped"])
def test_a_key_link_that_loops_is_the_documented_config_error(tmp_path: Path,
                                                              name: str) -> None:
    """A link to itself (ELOOP) is no vanished file: e0455193's listing stat let its
    OSError out of from_directory for a stamped name too (the read before it had made it
    ``ConfigError: cannot read <file>``; an unstamped one escaped already)."""
    from meshkit.errors import ConfigError

    KeySet.rotate_directory(tmp_path)
    os.symlink(tmp_path / name, tmp_path / name)
    with pytest.raises(ConfigError, match="cannot read") as err:
        KeySet.from_directory(tmp_path, create=False)
    assert name in str(err.value)
