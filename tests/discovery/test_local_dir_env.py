"""``MESHKIT_LOCAL_DIR`` must name an absolute directory, as a ``local:`` URI must.

A relative value (``.mesh``, or ``~/mesh`` from a systemd unit or a container's
environment, where no shell expands ``~``) was taken relative to each process's working
directory: a server and a client started from two directories used two registries
unawares (the client's calls failed UNAVAILABLE "no endpoint is registered"), and
``~/mesh`` made a directory named ``~`` wherever the process started."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.discovery import LocalOptions, LocalRegistry, registry_from_env, registry_from_uri
from meshkit.errors import ConfigError


@pytest.mark.parametrize("value", [".mesh", "~/mesh", "mesh/dir"])
def test_a_relative_local_dir_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MESHKIT_LOCAL_DIR", value)
    for build in (LocalRegistry, LocalOptions, registry_from_env,
                  lambda: registry_from_uri("local://"),
                  lambda: registry_from_env({"MESHKIT_LOCAL_DIR": value}),
                  lambda: registry_from_uri("local://", environ={"MESHKIT_LOCAL_DIR": value})):
        with pytest.raises(ConfigError, match=r"MESHKIT_LOCAL_DIR.*absolute") as err:
            build()
        assert repr(value) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing made in the working directory


async def test_an_absolute_local_dir_is_used(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("MESHKIT_LOCAL_DIR", str(tmp_path / "mesh"))
    registry = LocalRegistry()
    try:
        assert registry.options.path == tmp_path / "mesh" / "registry.db"
    finally:
        await registry.close()


@pytest.mark.parametrize("pad", [" ", "\n", "\t "])
async def test_local_dir_is_stripped_as_the_other_variables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pad: str) -> None:
    """A value with surrounding blanks (an env file's trailing space, a value read from a
    file with its newline) names the directory without them, as MESHKIT_REGISTRY,
    CONSUL_* and ETCDCTL_* are read: it named a directory ``'mesh '`` of its own, so a
    process given the variable by a shell and one given it by such a file used two
    registries unawares."""
    want = tmp_path / "mesh" / "registry.db"
    value = f"{pad}{tmp_path / 'mesh'}{pad}"
    monkeypatch.setenv("MESHKIT_LOCAL_DIR", value)
    assert LocalOptions().path == want
    for registry in (registry_from_env(), registry_from_env({"MESHKIT_LOCAL_DIR": value}),
                     registry_from_uri("local://", environ={"MESHKIT_LOCAL_DIR": value})):
        assert isinstance(registry, LocalRegistry)
        try:
            assert registry.options.path == want
        finally:
            await registry.close()


async def test_a_uri_path_with_a_trailing_slash_is_a_directory(tmp_path: Path) -> None:
    """``local:///srv/run.db/`` names the directory ``run.db`` (LocalOptions' rule: a
    path given with a trailing slash is a directory, whatever its suffix), as
    ``LocalOptions(path="/srv/run.db/")`` does: the URI's path went through ``Path()``,
    which drops the slash, so it named the file ``/srv/run.db`` and a process given the
    URI and one given the options used two registries."""
    want = tmp_path / "run.db" / "registry.db"
    assert LocalOptions(path=f"{tmp_path}/run.db/").path == want
    registry = registry_from_uri(f"local://{tmp_path}/run.db/")
    assert isinstance(registry, LocalRegistry)
    try:
        assert registry.options.path == want
    finally:
        await registry.close()


@pytest.mark.parametrize("tail", ["c#1/mesh", "mesh#", "mesh#v2"])
def test_a_uri_path_holding_a_hash_is_refused(tmp_path: Path, tail: str) -> None:
    """A ``#`` in a ``local:`` URI ends its path (the rest is a fragment, which names
    nothing here): ``local:///srv/c#1/mesh`` named the registry of ``/srv/c``, silently,
    so a process given it and one given ``LocalOptions(path="/srv/c#1/mesh")`` used two
    registries unawares. It is a ConfigError saying to write ``%23`` (the fragment
    masked, as any part of a URI that is no option); ``%23`` names the directory."""
    with pytest.raises(ConfigError, match="%23") as caught:
        registry_from_uri(f"local://{tmp_path}/{tail}")
    assert tail.partition("#")[2] == "" or tail.partition("#")[2] not in str(caught.value)
    registry = registry_from_uri(f"local://{tmp_path}/c%231/mesh")
    assert isinstance(registry, LocalRegistry)
    assert registry.options.path == tmp_path / "c#1" / "mesh" / "registry.db"
