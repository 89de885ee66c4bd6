"""The default local registry directory, ``<tmp>/meshkit-<uid>/``, has a predictable name in
a directory every user can write: it is used only when it is this user's own (as tmux
checks ``/tmp/tmux-<uid>``, and as ``$XDG_RUNTIME_DIR`` must be), and created mode 0700.
A directory the user names (``LocalOptions(path=...)``, ``local:///dir``,
``MESHKIT_LOCAL_DIR``) is the user's choice and is used as it is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry, registry_from_uri
from meshkit.errors import RegistryError

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 65534  # nobody


def inst(i: str = "a") -> Instance:
    return Instance(service="svc", instance_id=i, host="127.0.0.1", port=50051)


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of this process's own (``tempfile.gettempdir()``), sticky and
    writable by everyone as ``/tmp`` is, with no ``MESHKIT_LOCAL_DIR``."""
    d = tmp_path / "tmp"
    d.mkdir()
    d.chmod(0o1777)
    monkeypatch.delenv("MESHKIT_LOCAL_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    yield d


def default_dir(tmp: Path) -> Path:
    return tmp / f"meshkit-{os.getuid()}"


async def refused(reg: LocalRegistry, why: str) -> str:
    """``reg.register`` fails with a RegistryError naming the directory and ``why``."""
    directory = str(reg.options.path.parent)
    try:
        with pytest.raises(RegistryError) as info:
            await reg.register(inst())
    finally:
        await reg.close()
    message = str(info.value)
    assert directory in message and why in message, message
    assert "unsafe" in message, message
    return message


_REGISTER_DEFAULT = r'''
import asyncio
import contextlib
from meshkit.discovery import Instance, registry_from_uri

async def main():
    reg = registry_from_uri("local://")
    try:
        await reg.register(Instance(service="procstart", instance_id="procstart-1",
                                    host="127.0.0.1", port=50051))
    finally:
        await reg.close()

asyncio.run(main())
'''


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user's needs root")
def test_the_default_local_registry_refuses_a_directory_another_user_controls(
        tmp_path: Path) -> None:
    """A user on a shared machine creates ``/tmp/meshkit-<victim uid>/`` first (the name
    is predictable), their own and writable by everyone. Before: the victim's servers and
    clients on the default registry (``local://``) registered into it without a word
    (``mkdir(exist_ok=True)``, SQLite opened whatever was there), so the other user could
    replace ``registry.db`` and list their own endpoints under the victim's service names
    (plaintext calls sent to them) or empty it. Now: register fails with a RegistryError
    naming the directory and why it is unsafe (tmux's "unsafe permissions" check of
    ``/tmp/tmux-<uid>``), and nothing is written into it. Runs as a process of its own,
    with ``TMPDIR`` set, as a user starts one."""
    tmp = tmp_path / "tmp"
    squatted = tmp / f"meshkit-{os.getuid()}"
    squatted.mkdir(parents=True)
    squatted.chmod(0o777)
    os.chown(squatted, OTHER_UID, OTHER_UID)
    script = tmp_path / "register.py"
    script.write_text(_REGISTER_DEFAULT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=REPO,
                          env={**env, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)})
    assert not (squatted / "registry.db").exists()
    assert proc.returncode != 0
    assert "RegistryError" in proc.stderr and str(squatted) in proc.stderr, proc.stderr
    assert f"owned by uid {OTHER_UID}" in proc.stderr, proc.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user's needs root")
async def test_another_users_private_directory_is_refused_too(tmp: Path) -> None:
    """Mode 0700 but another user's (they keep it for themselves and can still replace
    its files): refused as well; ownership alone decides."""
    d = default_dir(tmp)
    d.mkdir(mode=0o700)
    os.chown(d, OTHER_UID, OTHER_UID)
    await refused(LocalRegistry(), f"owned by uid {OTHER_UID}")
    assert not (d / "registry.db").exists()


async def test_a_default_directory_writable_by_others_is_made_private_when_all_is_ours(
        tmp: Path) -> None:
    """The user's own directory, but writable by its group or by everyone (an older
    meshkit under umask 002, the default of user-private-group systems, or 000): made
    private (0700) and used when everything in it is the user's own regular file, so an
    upgrade does not refuse a directory nobody else touched."""
    d = default_dir(tmp)
    d.mkdir()
    for mode in (0o777, 0o775, 0o702):
        d.chmod(mode)
        reg = LocalRegistry()
        try:
            await reg.register(inst())
        finally:
            await reg.close()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, oct(d.stat().st_mode)


async def test_a_default_directory_others_could_write_holding_a_link_is_refused(
        tmp: Path) -> None:
    """Others could write to it and something in it is not the user's own regular file
    (here a symbolic link standing for ``registry.db``): refused, the error names it; a
    watch reports the error in ``status()`` and yields nothing."""
    d = default_dir(tmp)
    d.mkdir()
    (d / "registry.db").symlink_to(tmp / "theirs.db")
    d.chmod(0o777)
    message = await refused(registry_from_uri("local://"),  # type: ignore[arg-type]
                            "not a regular file")
    assert "mode 777" in message and "'registry.db'" in message, message
    assert not (tmp / "theirs.db").exists()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700  # refused, and private from then on
    reg = LocalRegistry(LocalOptions(poll_interval_s=0.02))
    watch = reg.watch("svc")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(watch), 0.3)
        status = reg.status()
        assert status.readable is False and status.last_error is not None
        assert str(d) in status.last_error and "unsafe" in status.last_error
    finally:
        await watch.aclose()
        await reg.close()


@pytest.mark.skipif(os.getuid() != 0, reason="a file of another user's needs root")
async def test_a_default_directory_others_could_write_holding_their_file_is_refused(
        tmp: Path) -> None:
    """...and a ``registry.db`` another user put there: refused, naming its owner."""
    d = default_dir(tmp)
    d.mkdir()
    (d / "registry.db").write_bytes(b"")
    os.chown(d / "registry.db", OTHER_UID, OTHER_UID)
    d.chmod(0o770)
    message = await refused(LocalRegistry(), f"owned by uid {OTHER_UID}")
    assert "mode 770" in message, message
    assert "'registry.db'" in message, message


async def test_a_symbolic_link_as_the_default_directory_is_refused(tmp: Path,
                                                                   tmp_path: Path) -> None:
    """``/tmp/meshkit-<uid>`` a symbolic link (another user's, pointing to a directory
    they control; even to one of this user's): refused, not followed."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    default_dir(tmp).symlink_to(target)
    await refused(LocalRegistry(), "symbolic link")
    assert not (target / "registry.db").exists()


async def test_a_file_as_the_default_directory_is_refused(tmp: Path) -> None:
    default_dir(tmp).write_text("")
    await refused(LocalRegistry(), "not a directory")


async def test_the_default_directory_is_created_private(tmp: Path) -> None:
    """Before: created 0755 (umask 022) with a 0644 database, so every local user could
    read each instance's address and meta (which may hold secrets). Now 0700, and a
    default directory an older meshkit left readable by others (0755, 0750) is made 0700
    at open: it is this user's own and nobody else could write it. The owner's own bits
    are left alone (a directory made read-only on purpose stays so)."""
    d = default_dir(tmp)
    reg = LocalRegistry()
    try:
        await reg.register(inst())
        assert {i.instance_id for i in await reg.instances("svc")} == {"a"}
    finally:
        await reg.close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for mode, after in ((0o755, 0o700), (0o750, 0o700), (0o711, 0o700), (0o555, 0o500)):
        d.chmod(mode)
        reg = LocalRegistry()
        try:
            assert {i.instance_id for i in await reg.instances("svc")} == {"a"}
        finally:
            await reg.close()
        assert stat.S_IMODE(d.stat().st_mode) == after


async def test_the_default_directory_however_it_is_named_is_checked(tmp: Path) -> None:
    """``local:///tmp/meshkit-<uid>`` or ``LocalOptions(path=default_local_path())``
    name the same predictable directory as ``local://``: checked the same way, and a
    path below it too."""
    d = default_dir(tmp)
    d.mkdir()
    (d / "theirs").symlink_to(tmp)
    d.chmod(0o777)
    await refused(registry_from_uri(f"local://{d}"),  # type: ignore[arg-type]
                  "not a regular file")
    await refused(LocalRegistry(LocalOptions(path=d / "registry.db")),
                  "not a regular file")
    reg = LocalRegistry(LocalOptions(path=d / "sub" / "run.db"))
    try:
        with pytest.raises(RegistryError, match="unsafe"):
            await reg.register(inst())
    finally:
        await reg.close()
    assert not (d / "sub").exists()


async def test_a_directory_the_user_names_is_used_as_it_is(
        tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared directory the user chose (a group's, writable by everyone):
    ``LocalOptions(path=...)``, ``local:///dir`` and ``MESHKIT_LOCAL_DIR`` work as before,
    its mode left alone; only the default per-user directory is checked."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    if os.getuid() == 0:
        os.chown(shared, OTHER_UID, OTHER_UID)
    monkeypatch.setenv("MESHKIT_LOCAL_DIR", str(shared))
    for reg in (LocalRegistry(LocalOptions(path=shared)),
                registry_from_uri(f"local://{shared}"), LocalRegistry()):
        assert isinstance(reg, LocalRegistry)
        try:
            await reg.register(inst())
            assert {i.instance_id for i in await reg.instances("svc")} == {"a"}
        finally:
            await reg.close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777
    assert (shared / "registry.db").exists()


async def test_a_registry_below_the_default_directory_opens_a_second_time(tmp: Path) -> None:
    """``LocalOptions(path=<tmp>/meshkit-<uid>/team/registry.db)``, a path below the
    default directory (checked as it is): the first open made ``team/``, and every later
    open, of that registry and of the default one, was refused ("it holds 'team', not a
    regular file"): meshkit locked the user out with a directory it made itself. The
    user's own subdirectories are accepted, their contents checked the same way."""
    below = default_dir(tmp) / "team" / "registry.db"
    for i in range(2):
        reg = LocalRegistry(LocalOptions(path=below))
        try:
            await reg.register(inst(f"team-{i}"))
        finally:
            await reg.close()
    reg = LocalRegistry()
    try:
        await reg.register(inst("default"))
    finally:
        await reg.close()
    (below.parent / "theirs").symlink_to(tmp)
    await refused(LocalRegistry(), "'team/theirs', not a regular file or directory")


async def test_opening_the_default_registry_while_another_closes_its_own(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes of one user on the default registry: the open's directory check
    lists ``<tmp>/meshkit-<uid>`` and then stats each entry; the other process's last
    SQLite connection closing in between deletes ``registry.db-wal``/``-shm``
    (https://sqlite.org/wal.html) and the stat raised ``FileNotFoundError``: the
    register/watch/list failed with a RegistryError (21-28 of ~5,000 opens of three
    processes in a loop). An entry gone meanwhile is skipped."""
    first = LocalRegistry()
    try:
        await first.register(inst())
    finally:
        await first.close()
    other = LocalRegistry()  # "the other process": its connection is open, -wal exists
    await other.instances("svc")
    assert (default_dir(tmp) / "registry.db-wal").exists()
    real_scandir = os.scandir
    closed: list[bool] = []

    def scandir_then_other_closes(target: Any) -> Any:
        with real_scandir(target) as listing:
            entries = list(listing)
        if isinstance(target, int) and not closed:  # the open's check (by descriptor)
            closed.append(True)
            conn = other._conn  # its last connection closes now: -wal/-shm deleted
            assert conn is not None
            conn.close()
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(os, "scandir", scandir_then_other_closes)
    reg = LocalRegistry()
    try:
        async with asyncio.timeout(30):
            await reg.instances("svc")
    finally:
        monkeypatch.setattr(os, "scandir", real_scandir)
        await reg.close()
        await other.close()
    assert closed
