"""``KeySet.from_directory`` given a key's PEM for its directory made the key a path.

``KeySet.from_directory(os.environ["JWT_KEY"])`` where the variable holds the signing
key itself (not the directory of its files) found no ``jwt-*.key`` there and, with
``create=True`` (the default), made the "directory": a tree of directories under the
working directory whose names spell out the private key (its base64 holds ``/``), mode
0700 but listed by anyone who can list the parent, then signed with a new key of its
own, so the tokens of every other instance, signed with the real key, were refused. Such
a value (what :func:`meshkit._config.shown_path` hides: PEM armour, a line break) is now a
``ConfigError`` naming it by type and length; nothing is created.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.auth import KeySet
from meshkit.errors import ConfigError


@pytest.mark.parametrize("form", ["str", "bytes-path", "one-line"])
def test_a_key_given_for_the_directory_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    source = tmp_path / "source"
    KeySet.from_directory(source)  # a real key, as a Secret would hold it
    (key_file,) = source.glob("jwt-*.key")
    pem = key_file.read_text()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    value: object = {"str": pem, "bytes-path": Path(pem),
                     "one-line": pem.replace("\n", "")}[form]
    with pytest.raises(ConfigError, match="directory") as info:
        KeySet.from_directory(value)  # type: ignore[arg-type]
    body = [line[:20] for line in pem.splitlines() if not line.startswith("-----")]
    assert [b for b in body if b in str(info.value)] == [], str(info.value)
    assert os.listdir(work) == []


def test_a_directory_is_still_made_and_loaded(tmp_path: Path) -> None:
    keys = KeySet.from_directory(tmp_path / "keys")
    assert KeySet.from_directory(tmp_path / "keys").current.kid == keys.current.kid
