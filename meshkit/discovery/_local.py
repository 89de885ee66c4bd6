"""The embedded registry: one SQLite file shared by every process on a machine.

Liveness is a heartbeat: each registered instance row carries an expiry that its owner
pushes forward every ``heartbeat_interval_s``; a row not renewed within ``ttl_s`` is dead to
watchers, so a process killed with SIGKILL drops out within its TTL. Watchers poll every
``poll_interval_s`` (default 0.25 s) and yield only on change. SQLite runs in WAL mode with a
busy timeout so many processes can read and write at once.

**Clocks.** The wall clock steps (an NTP correction, a VM resumed, ``date -s``): judged on
it, a step forward by more than ``ttl_s`` would make every live instance look dead until its
next heartbeat (and the sweep below delete its row), and a step back would keep dead ones
listed for as long as the step. Every process sharing the file is on one host (SQLite's WAL
needs shared memory: https://sqlite.org/wal.html), so they share its kernel's boot clock
(``CLOCK_BOOTTIME``: monotonic, counting suspend). Each row therefore carries, next to
``expires_at`` (wall clock, seconds: what older meshkit versions read and write), a *boot
stamp*: the writer's boot id (``/proc/sys/kernel/random/boot_id``) and time namespace
(``boot_id``), its expiry on that boot clock (``boot_expires_at``) and the ``expires_at``
written with it (``boot_wall_expires_at``). A reader judges a row

* on its boot clock if the row's stamp is of its own boot id and time namespace;
* on the wall clock otherwise, as before: a row without a stamp (an older meshkit wrote it),
  one whose stamp no longer goes with its ``expires_at`` (an older meshkit renewed a row a
  newer one wrote: it updates ``expires_at`` only), one of another time namespace of the
  same boot (a container with boot-time offsets), one of another boot id, or a reader
  without a boot clock (``LocalOptions.boot_clock=None``; not Linux: macOS), which writes
  no stamp either. Another boot id cannot be told apart: the file may have outlived a
  reboot (the owner is gone), or the writer runs in a container with a boot id of its own
  on this very kernel and boot clock (LXC/LXD/Incus and systemd-nspawn give each container
  one), live and sharing the file through a bind mount. So such a row is neither dead nor
  swept for its boot id alone: a row left from before a reboot expires on the wall clock,
  as rows without a stamp do (listed until its wall-clock expiry, should the wall clock
  have stepped back across the reboot).

The sweep that deletes rows dead for ``10 * ttl_s`` applies the same rule, so a wall-clock
step never deletes a live row of this boot id and time namespace. An older file is upgraded
in place on open (``ALTER TABLE ... ADD COLUMN``, NULL in its rows: judged on the wall
clock); a process that cannot write it reads it on the wall clock until another process has
upgraded it. Tombstones and the
``last_write`` time below stay on the wall clock: a step only changes when tombstones are
collected and, during a write outage, which expired entries a new watch keeps.

SQLite's busy timeout does not cover every contended case: switching a new file to WAL while
another process does the same, the last connection's WAL cleanup at close, and WAL recovery
after a crash return ``SQLITE_BUSY`` at once (https://sqlite.org/wal.html, "Sometimes
queries return SQLITE_BUSY in WAL mode"). Every operation here is idempotent, so a busy
error is retried with a short jittered backoff until ``busy_timeout_s`` has passed.

Failure modes (each is reported once per outage in the log and in :meth:`status`):

* **Writes fail** (read-only file or file system, full disk, immutable file): heartbeats
  cannot renew entries, so entries expire although their owners live. A registry whose writes
  fail is a fault, not "every instance left". While this process cannot write, and for
  ``fault_grace_s`` (default one TTL, three heartbeats) after its writes work again, each of
  its watches keeps the endpoints of its last set that the registry no longer lists as live
  (the last known good set), merged with what the registry lists; a watch that starts during
  the outage keeps the expired entries that were live at the registry's last successful
  write (every write stamps a ``last_write`` time). The grace period matters because the
  first write after a shared outage (the file made writable again) does not renew the
  entries of the other owners: they renew at their next heartbeat. After it, the registry's
  view applies again: an owner that died meanwhile drops out. Whether this process can
  write: its latest write if it is at most two heartbeat intervals old (a process with
  registrations always has one), else a *write probe*, one small write transaction, run only
  when an endpoint of a watch's last set is no longer listed as live, and at most once per
  two heartbeat intervals: a healthy poll writes nothing. The trade-off: an instance that
  dies while this process cannot write stays in its watches until the grace period ends
  (calls to it fail to connect, which the balanced channel handles as for any failing
  endpoint). A process that alone cannot write (a user or a container given the file
  read-only) sees the others' writes go on (the ``last_write`` counter, read by a watch
  only while it keeps endpoints): once its watch has seen them for ``fault_grace_s``, the
  registry's view applies there too, but for this process's own instances and for the
  entries that expired after the last write anyone made (the writers' outage begun
  meanwhile), so an instance that died leaves it as it leaves every other process's
  watches, not never.
* **Deregistration** leaves a tombstone (table ``deregistered``, collected after
  ``10 * ttl_s``), so a watch that keeps endpoints after a fault still drops an instance
  that left explicitly (a graceful drain) at its next poll.
* **Reads fail** (unreadable or corrupt file): a watch keeps its last set, or, if it never read
  anything, yields nothing (never an empty set because of an error) until a read succeeds.
* **A row does not decode** (tags or meta that are not JSON of the right shape, a field
  :class:`~meshkit.discovery.Instance` refuses: a foreign or older writer, a damaged page):
  that row is skipped and the rest of the service is listed, as the Consul and etcd
  registries skip an unusable entry, so the watch goes on (the Registry contract: a watch
  ends only when closed or cancelled). A warning names the service and instance id and the
  kind of error, never the row's values (meta may hold secrets), once per row and then at
  most every ``_UNUSABLE_LOG_EVERY_S`` (60 s) while it stays unusable.
* **A read-only registry** is readable by a new process: nothing is written when the file
  is opened unless it needs setting up. SQLite can read a WAL database without write access
  when its ``-wal`` and ``-shm`` files exist or can be created
  (https://sqlite.org/wal.html#readonly); when neither holds (nobody has the file open, so
  the last connection deleted them, and the directory is not writable) the file is opened
  ``immutable=1``, which reads the main file only; that is then the whole state, as it is
  only after the WAL has been checkpointed and deleted, and the normal open is tried again
  as soon as a ``-wal`` file appears.
* **The file is deleted or replaced** (``rm``, a tmp cleaner): processes holding the old
  file would keep an island of their own. Before each operation the path's device and inode
  are compared with the open file's (one ``stat``); if they differ or the path is gone, the
  file is reopened (created if need be) and this process's instances are written to it again.
  The new file lists only the owners that have noticed so far, so for ``fault_grace_s``
  after the reopen this process's watches keep their last endpoints merged with it, as after
  a write outage.

**The default directory** ``<tmp>/meshkit-<uid>`` is checked before each open (see
:class:`LocalOptions`): another user's, or one others may write, is refused, every operation
failing with :class:`~meshkit.errors.RegistryError` (reported as any outage), since whoever
controls it decides which endpoints the user's clients call.

**Forks and event loops.** A registry is usable in a child forked after it was used (a
pre-fork master's workers, ``multiprocessing``): in the child it gets a worker thread and a
connection of its own (``os.register_at_fork``; SQLite forbids using a connection opened
before a fork in the child, https://sqlite.org/howtocorrupt.html section 2.6, so the
inherited one is left alone, not even closed) and forgets its parent's registrations and
heartbeats. A fork waits for a registry operation under way in the worker thread to end
(one try: a wait for a lock another process holds is made of tries at most
``_SQLITE_BUSY_WAIT_S`` long, and a fork goes on between two): SQLite's own table of the
locks the process holds is copied by the fork while the locks are not, so a child forked
during a write took the write lock for its own and could never write. It is usable
across event loops, one after another (``asyncio.run()`` again): a heartbeat task of a
loop that ended is dropped when the instance registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import itertools
import json
import os
import random
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import structlog

from meshkit._config import (
    check_clock,
    check_instance,
    check_number,
    check_path,
    check_seconds,
)
from meshkit._fork import reset_in_forked_child
from meshkit._tasks import cancel_and_wait
from meshkit.discovery._shared import due_to_log, kept_count
from meshkit.discovery._types import (
    Derived,
    Instance,
    Outage,
    RegistryStatus,
    ServiceSnapshot,
    StatusTracker,
    is_default,
)
from meshkit.errors import ConfigError, RegistryError

__all__ = ["LocalOptions", "LocalRegistry", "default_local_path"]

_log = structlog.get_logger("meshkit.discovery.local")
_T = TypeVar("_T")

#: Seconds between two warnings about the same unusable row (every poll reads it again).
_UNUSABLE_LOG_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    tags        TEXT NOT NULL,
    meta        TEXT NOT NULL,
    weight      INTEGER NOT NULL,
    expires_at  REAL NOT NULL,
    boot_id     TEXT,
    boot_expires_at REAL,
    boot_wall_expires_at REAL
);
CREATE INDEX IF NOT EXISTS instances_by_service ON instances (service, expires_at);
CREATE TABLE IF NOT EXISTS last_write (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    seq         INTEGER NOT NULL,
    written_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deregistered (
    instance_id TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    at          REAL NOT NULL
);
"""
_TABLES = frozenset({"instances", "last_write", "deregistered"})
#: The boot stamp's columns (module docstring): added to an older file's ``instances``
#: table by ``ALTER TABLE ... ADD COLUMN`` (NULL in its rows), never dropped.
_BOOT_COLUMNS = {"boot_id": "TEXT", "boot_expires_at": "REAL", "boot_wall_expires_at": "REAL"}
#: Seconds SQLite's own busy handler waits for a lock within one try (the rest of
#: ``busy_timeout_s`` is LocalRegistry._call's retries; see _before_fork).
_SQLITE_BUSY_WAIT_S = 0.05
#: Rows dead for this many TTLs are garbage: their owners are gone for good.
_GC_TTLS = 10

_UPSERT = (
    "INSERT INTO instances (instance_id, service, host, port, tags, meta, weight,"
    " expires_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(instance_id) DO UPDATE SET"
    " service=excluded.service, host=excluded.host, port=excluded.port,"
    " tags=excluded.tags, meta=excluded.meta, weight=excluded.weight,"
    " expires_at=excluded.expires_at")
_UPSERT_STAMPED = (
    "INSERT INTO instances (instance_id, service, host, port, tags, meta, weight,"
    " expires_at, boot_id, boot_expires_at, boot_wall_expires_at)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(instance_id) DO UPDATE SET"
    " service=excluded.service, host=excluded.host, port=excluded.port,"
    " tags=excluded.tags, meta=excluded.meta, weight=excluded.weight,"
    " expires_at=excluded.expires_at, boot_id=excluded.boot_id,"
    " boot_expires_at=excluded.boot_expires_at,"
    " boot_wall_expires_at=excluded.boot_wall_expires_at")
_SELECT = ("SELECT instance_id, host, port, tags, meta, weight, expires_at FROM instances"
           " WHERE service = ?")
_SELECT_STAMPED = ("SELECT instance_id, host, port, tags, meta, weight, expires_at, boot_id,"
                   " boot_expires_at, boot_wall_expires_at FROM instances WHERE service = ?")
#: The sweep of rows dead for _GC_TTLS TTLs, by the rule of LocalRegistry._read: :wall and
#: :boot are the horizons on either clock, :key this process's stamp. Only a row stamped
#: with :key (and its stamp still going with its expires_at) is judged on the boot clock;
#: every other one (no stamp, another time namespace, another boot id) on the wall clock.
_SWEEP_STAMPED = (
    "DELETE FROM instances WHERE CASE"
    " WHEN boot_id = :key AND boot_wall_expires_at IS expires_at"
    " THEN boot_expires_at < :boot"
    " ELSE expires_at < :wall END")

_inherited: list[sqlite3.Connection] = []  # a parent's connections, in a child: never used


def _boottime() -> float:
    """The host's boot clock, seconds: ``CLOCK_BOOTTIME`` (monotonic, counts suspend)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _usable_boot_clock() -> Callable[[], float] | None:
    """:func:`_boottime` where the platform has ``CLOCK_BOOTTIME`` (Linux), else None."""
    if getattr(time, "CLOCK_BOOTTIME", None) is None:
        return None
    try:
        _boottime()
    except OSError:  # a kernel without it
        return None
    return _boottime


#: The default ``LocalOptions.boot_clock``.
_BOOT_CLOCK = _usable_boot_clock()


@functools.cache
def _this_boot() -> str | None:
    """The kernel's boot id (a UUID that changes at each boot), None where there is none
    (not Linux, no ``/proc``). Read once per process."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
    except (OSError, ValueError):
        return None
    return boot if boot and "/" not in boot else None


def _time_namespace() -> str:
    """This process's time namespace (its nsfs inode number: processes in another one may
    see the boot clock offset), ``""`` where there are none or it cannot be read."""
    try:
        return str(os.stat("/proc/self/ns/time").st_ino)
    except OSError:
        return ""


def _add_boot_columns(conn: sqlite3.Connection, *, write: bool) -> bool:
    """Whether the ``instances`` table has the boot stamp's columns; with ``write``, the
    missing ones are added first (one write transaction: an older file upgraded in place).
    A file that cannot be written (read-only, full disk) is left as it is: False.

    Raises:
        sqlite3.OperationalError: the file is busy (retried by the caller).
    """
    def columns() -> set[str]:
        return {r[1] for r in conn.execute("PRAGMA table_info(instances)")}

    if columns() >= _BOOT_COLUMNS.keys():
        return True
    if not write:
        return False
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = columns()  # again, under the write lock: another process may have
            for name, kind in _BOOT_COLUMNS.items():  # added them meanwhile
                if name not in have:
                    conn.execute(f"ALTER TABLE instances ADD COLUMN {name} {kind}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            raise
        return False
    return True


def _per_user_dir() -> Path:
    """``<tmp>/meshkit-<uid>``: the default directory when ``MESHKIT_LOCAL_DIR`` is unset."""
    return Path(tempfile.gettempdir()) / f"meshkit-{os.getuid()}"


def default_local_path() -> Path:
    """The default registry file: ``$MESHKIT_LOCAL_DIR/registry.db`` (the value
    stripped of surrounding blanks, as every variable meshkit reads), else
    ``<tmp>/meshkit-<uid>/registry.db`` (one registry per user per machine; that
    directory is created mode 0700 and used only if it is the user's own, see
    :class:`LocalOptions`).

    Raises:
        ConfigError: ``MESHKIT_LOCAL_DIR`` is not an absolute path (quoted).
    """
    base = os.environ.get("MESHKIT_LOCAL_DIR", "").strip()  # blank: unset
    return (_local_dir_from_env(base) if base else _per_user_dir()) / "registry.db"


def _local_dir_from_env(value: str) -> Path:
    """``MESHKIT_LOCAL_DIR``'s ``value``, the registry directory.

    Raises:
        ConfigError: ``value`` is not an absolute path (quoted): each process would take
            a relative one from its own working directory, so a server and a client
            started in two directories would use two registries unawares (as a
            ``local:`` URI's path must be absolute); ``~`` is not expanded (no shell
            does in a systemd unit's or a container's environment).
    """
    if not os.path.isabs(value):
        raise ConfigError(
            f"MESHKIT_LOCAL_DIR must be an absolute path (a relative one is taken from "
            f"each process's working directory; ~ is not expanded), got {value!r}")
    return Path(value)


def _unsafe(directory: Path, why: str) -> PermissionError:
    return PermissionError(
        f"unsafe default registry directory {str(directory)!r}: {why}; another user could "
        "list their own endpoints in it or empty it. Remove it, or name a directory with "
        "local:///path, LocalOptions(path=...) or MESHKIT_LOCAL_DIR")


def _private_dir(directory: Path) -> None:
    """Create the per-user default directory (``<tmp>/meshkit-<uid>``) mode 0700 if it is
    missing, and check it is this user's own, as tmux checks ``/tmp/tmux-<uid>``: no
    symbolic link (not followed), a directory, owned by this user. One readable by others
    (0755: an older meshkit, umask 022) is made private (0700): the database lists every
    instance's address and meta. One writable by its group or others (0775: an older
    meshkit under umask 002, the default of user-private-group systems) is made private
    too (logged as a warning). Whatever its mode, it is used only if everything in it,
    subdirectories included, is this user's own regular file or directory (nobody else
    put a ``registry.db`` there).

    Raises:
        PermissionError: the directory is unsafe (the message names it, says why and how
            to fix it).
        OSError: it cannot be created, opened or changed.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:  # the checks and the chmod apply to what was opened: no race with a rename
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if stat.S_ISLNK(os.lstat(directory).st_mode):
            raise _unsafe(directory, "it is a symbolic link") from exc
        if exc.errno == errno.ENOTDIR:
            raise _unsafe(directory, "it is not a directory") from exc
        raise
    try:
        st = os.fstat(fd)
        uid = os.getuid()
        if st.st_uid != uid:
            raise _unsafe(directory, f"it is owned by uid {st.st_uid}, not by this user "
                                     f"(uid {uid})")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & ~0o077)  # first: nobody else adds anything from here on
        # whatever its mode now: a refusal below leaves it private, and the next open
        # must refuse what others put there before just the same
        foreign = _foreign_entry(fd, str(directory), uid)
        if foreign is not None:
            raise _unsafe(directory, f"it holds {foreign} (mode {mode:o}); if nobody else "
                                     "wrote to it, remove that")
        if mode & 0o022:
            _log.warning("default registry directory was writable by its group or others; "
                         "made private (mode 700)", path=str(directory), mode=f"{mode:o}")
    finally:
        os.close(fd)


def _foreign_entry(where: int | str, base: str, uid: int, prefix: str = "") -> str | None:
    """The first entry of the directory ``where`` (a descriptor or a path; its path
    ``base``), or of its subdirectories, recursively, that is not ``uid``'s own regular
    file or directory,
    described (``'team/registry.db', owned by uid 1001``); ``None`` when there is none.
    An entry gone meanwhile (another process's SQLite ``-wal``/``-shm`` removed as its last
    connection closed) is skipped: it is nobody's file to refuse."""
    with os.scandir(where) as listing:
        entries = list(listing)
    for entry in entries:
        try:
            est = entry.stat(follow_symlinks=False)
            name = prefix + entry.name
            if est.st_uid != uid:
                return f"{name!r}, owned by uid {est.st_uid}"
            if stat.S_ISDIR(est.st_mode):
                sub = os.path.join(base, entry.name)
                found = _foreign_entry(sub, sub, uid, name + "/")
                if found is not None:
                    return found
            elif not stat.S_ISREG(est.st_mode):
                return f"{name!r}, not a regular file or directory"
        except FileNotFoundError:
            continue
    return None


#: Suffixes that make a path that does not exist yet the database file (see LocalOptions).
_FILE_SUFFIXES = frozenset({".db", ".sqlite", ".sqlite3"})


def _database_path(path: str | os.PathLike[str]) -> Path:
    """The SQLite file that ``path`` names, by the rule :class:`LocalOptions` states: the
    path itself if it is an existing file, or does not exist, ends in one of
    ``_FILE_SUFFIXES`` and (as a string) has no trailing slash; else ``<path>/registry.db``.
    """
    text = os.fspath(path)
    p = Path(text)
    try:  # one look: processes starting together create the directory meanwhile
        mode: int | None = os.stat(text).st_mode
    except OSError:
        mode = None
    if text.endswith(("/", os.sep)) or (mode is not None and stat.S_ISDIR(mode)):
        return p / "registry.db"
    if mode is not None or p.suffix.lower() in _FILE_SUFFIXES:
        return p
    return p / "registry.db"


#: The least ``poll_interval_s`` and ``heartbeat_interval_s``, and the least ``ttl_s``,
#: seconds: below them a watch or a heartbeat is a busy loop (a typo, milliseconds).
_MIN_INTERVAL_S = 0.01
_MIN_TTL_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalOptions:
    """Options of :class:`LocalRegistry`.

    Args:
        path: the registry's directory (the file is ``<dir>/registry.db``) or its SQLite
            file. It is the file only if it names an existing file, or names nothing yet,
            ends in ``.db``, ``.sqlite`` or ``.sqlite3`` and, given as a string, has no
            trailing slash; anything else is the directory: an existing directory (also
            ``run.db/``), a string with a trailing slash, a new name like ``run.d`` or
            ``mesh``. Default :func:`default_local_path`. Missing directories are created.
            The per-user default directory ``<tmp>/meshkit-<uid>`` (``local://``; also
            when named explicitly, or a path below it) has a name anyone can predict in a
            directory anyone can write, so it is created mode 0700 and, at each open,
            used only if it is this user's own: a symbolic link, no directory or another
            user's is refused with :class:`~meshkit.errors.RegistryError` naming it (as
            tmux refuses ``/tmp/tmux-<uid>``); one readable or writable by its group or
            others is made private (0700; writable: logged as a warning). A directory
            the user names otherwise (``path``, ``local:///dir``, ``MESHKIT_LOCAL_DIR``:
            a group's shared directory, say) is used as it is, whoever owns it; whoever
            can write it can change the endpoints listed, and whoever can read it reads
            every instance's address and meta.
        ttl_s: how long a registration lives without a heartbeat, seconds (default 3.0,
            at least 0.1).
        heartbeat_interval_s: seconds between heartbeats, at least 0.01 and below
            ``ttl_s``; default ``ttl_s / 3``.
        poll_interval_s: how often watchers look for changes, seconds (default 0.25, at
            least 0.01: smaller ones poll without pause).
        clock: wall-clock source in seconds (injectable for tests), default ``time.time``.
            Every row's ``expires_at``, tombstones and the last-write time are written on
            it; it judges the rows without a boot stamp of this process's boot id and
            time namespace (module docstring, "Clocks"), and every row if ``boot_clock``
            or ``boot_id`` is None. A test that moves time by hand moves ``boot_clock`` too
            (or sets it to None).
        boot_clock: the host's boot clock in seconds, monotonic across wall-clock steps
            (injectable for tests); default ``CLOCK_BOOTTIME`` where the platform has it
            (Linux), else None: no boot stamps are written, and every row is judged on
            ``clock`` (as on macOS).
        boot_id: the host's boot id, a non-empty string without ``/``; default the
            kernel's (``/proc/sys/kernel/random/boot_id``, read once per process; a
            container may see one of its own), None where there is none (as
            ``boot_clock=None``). Only rows stamped with this boot id (and time
            namespace) are judged on ``boot_clock``; rows stamped with another one are
            judged on ``clock``, as rows without a stamp: they may be a container's on
            this kernel, live, or from before a reboot, whose owners are gone.
        busy_timeout_s: how long one operation waits on a locked file before it fails
            with :class:`~meshkit.errors.RegistryError`, seconds (default 5.0). Covers
            SQLite's busy handler and the busy errors it does not handle (see the module
            docstring).
        fault_grace_s: how long after a registry fault ends (this process's writes work
            again, or the file was found deleted or replaced) its watches keep endpoints
            the registry does not list, seconds; default ``ttl_s``: every live owner has
            had three heartbeats to renew or re-register (see the module docstring).

    The defaults worked out from ``ttl_s`` (``heartbeat_interval_s``, ``fault_grace_s``)
    read as the numbers in effect (floats), and are held as
    :class:`~meshkit.discovery._types.Derived`: ``dataclasses.replace(options,
    ttl_s=30)`` works them out again from the new ``ttl_s`` (the options equal
    ``LocalOptions(path=..., ttl_s=30)``), where it kept those of the old TTL (or failed
    the ``heartbeat_interval_s`` check on a value never written); a value given is kept,
    and checked against the new fields.

    Raises:
        ConfigError: a value is out of range or of the wrong type (quoted in the
            message): a ``path`` that is no ``str`` or ``os.PathLike`` (``None`` from an
            unset variable, ``bytes``), is ``""`` or holds NUL; a ``boot_clock`` that is
            not callable (nor None), a ``clock`` that is not callable (``time.time()``:
            its reading); a ``boot_id`` that is no string, is ``""`` or holds ``/``.
    """

    path: Path = field(default_factory=default_local_path)
    ttl_s: float = 3.0
    heartbeat_interval_s: float | None = None
    poll_interval_s: float = 0.25
    clock: Callable[[], float] = time.time
    busy_timeout_s: float = 5.0
    fault_grace_s: float | None = None
    boot_clock: Callable[[], float] | None = _BOOT_CLOCK
    boot_id: str | None = field(default_factory=_this_boot)

    def __post_init__(self) -> None:
        text = check_path("path", self.path)
        if "\x00" in text:  # os.stat's bare ValueError otherwise (local:///tmp/mesh%00)
            raise ConfigError(f"path must not hold a NUL character, got {text!r}")
        object.__setattr__(self, "path", _database_path(text))
        check_clock("clock", self.clock, wall=True)
        if self.boot_clock is not None and not callable(self.boot_clock):
            raise ConfigError(f"boot_clock must be a function returning seconds or None, "
                              f"got {self.boot_clock!r}")
        boot = self.boot_id
        if boot is not None and not (isinstance(boot, str) and boot and "/" not in boot):
            raise ConfigError(f"boot_id must be a non-empty string without '/' or None, "
                              f"got {boot!r}")
        # ttl_s first: the defaults below are worked out from it (again after a
        # replace(): a Derived is no value of the user's)
        check_seconds(self, ("ttl_s", "poll_interval_s", "busy_timeout_s"))
        for name, floor in (("ttl_s", _MIN_TTL_S), ("poll_interval_s", _MIN_INTERVAL_S)):
            if getattr(self, name) < floor:  # would poll or renew without pause
                raise ConfigError(f"{name} must be at least {floor} s, got "
                                  f"{getattr(self, name)!r}")
        hb = self.heartbeat_interval_s
        if is_default(hb):
            object.__setattr__(self, "heartbeat_interval_s", Derived(self.ttl_s / 3))
        else:
            check_number("heartbeat_interval_s", hb)
            assert hb is not None  # is_default() said so; for mypy
            if not 0 < hb < self.ttl_s:
                raise ConfigError(
                    f"heartbeat_interval_s must be in (0, ttl_s={self.ttl_s}), got {hb!r}"
                )
            if hb < _MIN_INTERVAL_S:  # would renew without pause
                raise ConfigError(f"heartbeat_interval_s must be at least "
                                  f"{_MIN_INTERVAL_S} s, got {hb!r}")
        if is_default(self.fault_grace_s):
            object.__setattr__(self, "fault_grace_s", Derived(self.ttl_s))
        else:
            check_seconds(self, ("fault_grace_s",), zero_ok=("fault_grace_s",))


def _code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)  # set by sqlite3 since Python 3.11
    return code if isinstance(code, int) else -1


def _is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...)."""
    return (_code(exc) & 0xFF) == sqlite3.SQLITE_BUSY


def _is_readonly(exc: sqlite3.Error) -> bool:
    """True for SQLITE_READONLY and its extended codes (READONLY_DIRECTORY, ...)."""
    return (_code(exc) & 0xFF) == sqlite3.SQLITE_READONLY


def _wal_files_unavailable(exc: sqlite3.Error) -> bool:
    """The error SQLite gives a read-only reader of a WAL database whose ``-wal``/``-shm``
    files are missing and cannot be created (SQLITE_READONLY_DIRECTORY; CANTOPEN in older
    versions)."""
    code = _code(exc)
    return code == sqlite3.SQLITE_READONLY_DIRECTORY or (code & 0xFF) == sqlite3.SQLITE_CANTOPEN


def _stop_elsewhere(task: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
    """``task`` (a heartbeat) if it is the running loop's and still runs, for the caller
    to cancel and await; otherwise None: a task of another loop still running (a server in
    another thread) is cancelled in that loop, thread-safely, and not awaited (a task
    cannot be awaited from another loop); one that ended or whose loop was closed (an
    earlier ``asyncio.run()`` cancels what is left when it ends) is dropped."""
    if task is None or task.done():
        return None
    loop = task.get_loop()
    if loop is asyncio.get_running_loop():
        return task
    with contextlib.suppress(RuntimeError):  # that loop is closed
        loop.call_soon_threadsafe(task.cancel)
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``; None if it does not exist. Other errors propagate."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Stale(Exception):
    """A heartbeat write found its heartbeat stopped when its turn came: not done."""


class _Snapshot(NamedTuple):
    """One read of a service's entries."""

    live: frozenset[Instance]
    # (instance, expires_at on the wall clock) of expired rows
    expired: tuple[tuple[Instance, float], ...]
    written_at: float | None  # the registry's last_write time (read only if expired)
    deregistered: frozenset[str]  # ids deregistered explicitly (tombstones not yet collected)
    # the registry's last_write counter, one more at every write of any process (read
    # with written_at, or when asked: a watch keeping endpoints after a fault)
    seq: int | None = None


def _json_list(text: str) -> tuple[Any, ...]:
    """A row's ``tags`` column: JSON text of a list, as a tuple.

    Raises:
        ValueError: not JSON.
        TypeError: JSON of another shape (a string, an object: ``tuple()`` of it would
            take it apart into characters or keys).
    """
    value = json.loads(text)
    if not isinstance(value, list):
        raise TypeError(f"tags must be a JSON list, got {type(value).__name__}")
    return tuple(value)


def _failing(snap: _Snapshot) -> frozenset[Instance]:
    """The instances of a read whose heartbeat lapsed and that were not deregistered."""
    return frozenset(i for i, _ in snap.expired if i.instance_id not in snap.deregistered)


def _live_at_last_write(snap: _Snapshot) -> list[Instance]:
    """The expired instances of a read that were live at the registry's last write and
    were not deregistered: what a new watch keeps during a registry fault (none for a file
    without a ``last_write`` table)."""
    at = snap.written_at
    if at is None:
        return []
    return [i for i, expires_at in snap.expired
            if expires_at > at and i.instance_id not in snap.deregistered]


_LOG_STARTED = {
    False: "local registry cannot be read; watches keep their last endpoints "
           "(or wait for a first read)",
    True: "local registry cannot be written; registrations are not renewed, "
          "and watches keep their last endpoints until it can (and a grace period after)",
}
_LOG_STILL = {False: "local registry still cannot be read",
              True: "local registry still cannot be written"}
_LOG_BACK = {False: "local registry readable again", True: "local registry writable again"}


def _check_service(service: object) -> None:
    """Refuse a ``service`` that names none (``""``, ``None``), as the other registries do.

    Raises:
        ConfigError: ``service`` is no non-empty string (quoted).
    """
    if not isinstance(service, str) or not service:
        raise ConfigError(f"service must not be empty, got {service!r}")


class LocalRegistry:
    """A :class:`~meshkit.discovery.Registry` in one SQLite file, for processes on one machine.

    Use ``local:///path/to/dir`` with :func:`~meshkit.discovery.registry_from_uri`, or build
    it directly::

        reg = LocalRegistry(LocalOptions(path=Path("/tmp/mesh"), ttl_s=3))
        await reg.register(Instance(service="orderd", instance_id="o1", host="127.0.0.1",
                                    port=50051))
        async for instances in reg.watch("orderd"): ...

    Faults (an unwritable, unreadable, deleted or replaced file) are handled as the module
    docstring describes, logged once per outage on ``meshkit.discovery.local`` (a reminder
    at most every 60 s while one lasts, and a line when it ends) and reported by
    :meth:`status`.

    Args:
        options: :class:`LocalOptions`; defaults apply when omitted.

    Raises:
        ConfigError: ``options`` is no :class:`LocalOptions` (a path given for
            ``LocalOptions(path=...)``, another registry's options; quoted).
        RegistryError: (from the methods) the file cannot be opened or written; the
            per-user default directory is unsafe (another user's, writable by others, a
            symbolic link: see :class:`LocalOptions`).
    """

    def __init__(self, options: LocalOptions | None = None) -> None:
        check_instance("options", options, LocalOptions)
        self.options = options or LocalOptions()
        # The per-user default directory if the file is in it (or below it), however it
        # was named: checked at each open (see LocalOptions).
        per_user = _per_user_dir()
        self._private = per_user if per_user in self.options.path.parents else None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._has_last_write = False  # the file has the last_write table (old files may not)
        self._has_tombstones = False  # the file has the deregistered table (idem)
        self._immutable = False  # opened immutable=1: read-only, no -wal/-shm (module doc)
        # The boot stamp this process writes and judges by ("Clocks" in the module doc):
        # None without a boot clock; _has_boot: the open file has its columns.
        self._boot_key: str | None = None
        self._stamp_boot()
        self._has_boot = False
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._moved = False  # the path was found naming another file, or none
        self._heartbeats: dict[str, asyncio.Task[None]] = {}
        # (instance id, service) -> a list per register() of it under way, to which a
        # deregister() of it adds an item: that register() then starts no heartbeat
        self._registering: dict[tuple[str, str], list[list[bool]]] = {}
        # What this process registered, written again into a replaced file. Replaced, never
        # mutated, so the worker thread reads a consistent snapshot without a lock.
        self._owned: Mapping[str, Instance] = {}
        # Updated only in the worker thread (under _lock); status() reads a snapshot.
        self._tracker = StatusTracker("local", clock=self.options.clock)
        self._gc_at = -float("inf")  # monotonic time of the last garbage collection
        self._reopened_at: float | None = None  # monotonic time of the latest reopen
        # (service, watch number) -> endpoints it keeps (faults)
        self._kept: dict[tuple[str, int], int] = {}
        # monotonic time a watch last saw others write while this process could not
        self._others_write_at: float | None = None
        self._watch_ids = itertools.count()
        # one write probe at a time: (the event loop, its lock); an asyncio.Lock binds to
        # a loop, so a later asyncio.run() or another thread's loop makes its own
        self._probe_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        # (service, instance_id) of an unusable row -> monotonic time it was last logged;
        # used only in the worker thread (under _lock).
        self._unusable_logged: dict[tuple[str, str], float] = {}
        # (service, instance_id, address found) -> monotonic time a duplicate id was
        # last logged (_log_duplicate); idem
        self._duplicate_logged: dict[tuple[str, str, str], float] = {}
        self._closed = False
        # A write that waits longer than this let renewals lapse (see _stalled)
        interval = self.options.heartbeat_interval_s
        assert interval is not None
        self._stall_s = self.options.ttl_s - interval
        # A thread of our own: heartbeats must not queue behind the application's
        # asyncio.to_thread work (password hashing, file I/O) in the default pool.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshkit-local")
        _registries.add(self)

    def _stamp_boot(self) -> None:
        """Set this process's boot stamp key, ``"<boot id>/<time namespace>"`` (None if it
        has no boot clock or boot id)."""
        opts = self.options
        if opts.boot_clock is None or opts.boot_id is None:
            self._boot_key = None
        else:
            self._boot_key = f"{opts.boot_id}/{_time_namespace()}"

    def _forget_parent(self) -> None:
        """In a forked child: the parent's worker thread did not survive the fork (its
        executor would queue work to a thread that does not exist) and its lock may have
        been held by it; the SQLite connection is the parent's (kept referenced, so that
        it is neither used nor closed here); the registrations and heartbeats are the
        parent's too. Give the child its own thread, lock and (at the next operation)
        connection, and nothing registered."""
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshkit-local")
        if self._conn is not None:
            _inherited.append(self._conn)
            self._conn = None
        for task in self._heartbeats.values():  # would run on, should the child go on
            with contextlib.suppress(Exception):  # running the parent's loop
                task.cancel()
        self._heartbeats = {}
        self._registering = {}
        self._owned = {}
        self._kept = {}
        self._others_write_at = None
        self._probe_lock = None
        self._stamp_boot()  # the parent may have made the child's time namespace its own

    # -- sqlite plumbing (runs in the worker thread, under _lock) --------------------------
    def _connect(self, database: str, uri: bool = False) -> sqlite3.Connection:
        # SQLite's own busy handler waits briefly (holding _lock); the rest of the wait,
        # up to busy_timeout_s, is _call's retries, which let go of _lock as they sleep
        return sqlite3.connect(database, timeout=min(self.options.busy_timeout_s,
                                                     _SQLITE_BUSY_WAIT_S),
                               uri=uri, check_same_thread=False, isolation_level=None)

    def _open(self) -> None:
        """Open the file into ``_conn``, creating and setting it up only if it needs it."""
        path = self.options.path
        if self._private is not None:
            _private_dir(self._private)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(str(path))
        immutable = False
        try:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not (_wal_files_unavailable(exc) and path.is_file()
                        and not os.path.exists(f"{path}-wal")):
                    raise
                # A WAL file we may not write, and no -wal/-shm to read it through: nobody
                # has it open, so the main file holds everything (see the module docstring).
                conn.close()
                uri = f"file:{urllib.parse.quote(str(path))}?immutable=1"
                conn = self._connect(uri, uri=True)
                immutable, mode = True, "wal"
            if mode.lower() != "wal":
                # Read first: switching to WAL takes an exclusive lock, needed only once.
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError as exc:
                    if not _is_readonly(exc):
                        raise  # without write access it stays as it is: reads still work
            conn.execute("PRAGMA synchronous=NORMAL")
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables >= _TABLES:
                try:
                    conn.executescript(_SCHEMA)
                    tables |= _TABLES
                except sqlite3.OperationalError as exc:
                    if not (_is_readonly(exc) and "instances" in tables):
                        raise  # a registry we cannot write but can read is fine
            # Stamping rows needs the boot columns: an older file gets them now, if it can
            # be written (else they are looked for again at each read and write).
            has_boot = self._boot_key is not None and _add_boot_columns(
                conn, write=not immutable)
        except BaseException:
            conn.close()
            raise
        self._conn, self._immutable = conn, immutable
        self._has_last_write = "last_write" in tables
        self._has_tombstones = "deregistered" in tables
        self._has_boot = has_boot

    def _drop(self) -> None:
        """Close the connection; the next operation opens the path again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _connection(self, write: bool) -> sqlite3.Connection:
        """The connection, (re)opened if the path no longer names the open file."""
        path = self.options.path
        if self._conn is not None:
            try:
                moved = _identity(path) != self._identity
            except OSError:
                moved = False  # cannot tell (e.g. a directory lost its x bit): keep going
            if moved:
                # Remembered rather than re-derived after the reopen: once the old file is
                # closed, a new one may get its inode number.
                self._moved = True
                self._drop()
            elif self._immutable and (write or os.path.exists(f"{path}-wal")):
                self._drop()
        if self._conn is None:
            self._open()
            previous = self._identity
            with contextlib.suppress(OSError):
                self._identity = _identity(path)
            if self._moved or (previous is not None and previous != self._identity):
                self._moved = False
                self._reregister()
        assert self._conn is not None
        return self._conn

    def _reregister(self) -> None:
        """The path names another file than before (deleted or replaced): write this
        process's instances into it at once rather than at their next heartbeats."""
        assert self._conn is not None
        owned = self._owned
        self._tracker.reopened += 1
        self._reopened_at = time.monotonic()
        error = None
        try:
            if owned:
                self._write(self._conn, *owned.values())
        except sqlite3.Error as exc:
            error = _describe(exc)  # the heartbeats retry; their failures are reported
        _log.warning("local registry file was deleted or replaced; reopened it",
                     path=str(self.options.path), reregistered=sorted(owned), error=error)

    def _outcome(self, write: bool, exc: BaseException | None) -> None:
        """Record an operation's outcome; log the start, reminders and end of an outage."""
        tracker = self._tracker
        if exc is None:
            duration = tracker.write_ok() if write else tracker.read_ok()
            if duration is not None:
                _log.info(_LOG_BACK[write], path=str(self.options.path),
                          outage_s=round(duration, 3))
            return
        if write and isinstance(exc, sqlite3.Error) and (_is_readonly(exc) or self._immutable):
            self._drop()  # opened read-only: open again next time, in case that changed
        error = f"local registry {str(self.options.path)!r}: {_describe(exc)}"
        outage: Outage | None = tracker.write_failed(error) if write else tracker.read_failed(
            error)
        if outage == "started":
            _log.warning(_LOG_STARTED[write], path=str(self.options.path),
                         error=_describe(exc))
        elif outage == "reminder":
            _log.warning(_LOG_STILL[write], path=str(self.options.path), error=_describe(exc),
                         failing_for_s=round(tracker.failing_for_s(write), 1),
                         errors=(tracker.write if write else tracker.read).errors)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool,
                   still: Callable[[], bool] | None = None) -> _T:
        """Run ``fn`` on the connection in the worker thread, retrying busy errors until
        ``busy_timeout_s``; record the outcome as a read or a ``write``. With ``still``,
        only if it still holds when the worker thread takes the job.

        Raises:
            RegistryError: the operation failed (chained from the sqlite3 or OS error).
            _Stale: ``still`` no longer held (nothing done, nothing recorded).
        """
        if self._closed:
            raise RegistryError(f"local registry {str(self.options.path)!r} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._call, fn, write, still)
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(
                f"local registry {str(self.options.path)!r}: {_describe(exc)}") from exc

    def _call(self, fn: Callable[[sqlite3.Connection], _T], write: bool,
              still: Callable[[], bool] | None) -> _T:
        """:meth:`_run`'s job, in the worker thread.

        Raises:
            sqlite3.Error, OSError: the operation failed (recorded).
            _Stale: ``still`` no longer held.
        """
        if still is not None and not still():
            raise _Stale
        started = time.monotonic()
        deadline = started + self.options.busy_timeout_s
        backoff_s = 0.002
        opening_s = 0.0  # not a wait for the lock: a first open sets the file up
        retried = False  # the file was busy (another process's lock) at least once
        with self._lock:
            try:
                while True:
                    try:
                        opened_at = time.monotonic()
                        conn = self._connection(write)
                        opening_s += time.monotonic() - opened_at
                        result = fn(conn)
                        break
                    except sqlite3.OperationalError as exc:
                        if not _is_busy(exc) or time.monotonic() >= deadline:
                            raise
                    retried = True
                    # No SQLite lock is held between two tries (the statement failed):
                    # a fork may go on meanwhile (_before_fork waits for _lock), rather
                    # than wait for the whole of busy_timeout_s
                    self._lock.release()
                    try:
                        time.sleep(backoff_s * random.uniform(0.5, 1.5))
                    finally:
                        self._lock.acquire()
                    backoff_s = min(backoff_s * 2, 0.05)
            except (sqlite3.Error, OSError) as exc:
                self._outcome(write, exc)
                raise
            if retried and write and (
                    waited_s := time.monotonic() - started - opening_s) > self._stall_s:
                self._stalled(waited_s)
            self._outcome(write, None)
            return result

    def _stalled(self, waited_s: float) -> None:
        """A write that worked but waited ``waited_s`` seconds, past the point where
        renewals lapse (the file's lock held by another process): the entries of every
        owner may have expired meanwhile, so it is recorded as a write outage ending now
        (the watches keep their endpoints for ``fault_grace_s``, as after any)."""
        error = (f"local registry {str(self.options.path)!r}: a write waited "
                 f"{waited_s:.1f} s for the file (its lock held by another process?)")
        self._tracker.write_failed(error)
        _log.warning("local registry writes stalled; entries may have expired meanwhile, "
                     "watches keep their endpoints for a grace period",
                     path=str(self.options.path), waited_s=round(waited_s, 3))

    def _withdraw(self, instance: Instance, wrote: list[bool]) -> None:
        """Delete ``instance``'s entry once the write queued before is done, if it was
        (``wrote`` holds an item then), without waiting: a :meth:`register` cancelled
        with its write under way, which its caller takes for not done. Nothing if the
        registry is closed (the entry expires then, as close() leaves every other)."""
        with contextlib.suppress(RuntimeError):  # the executor is shut down: closed
            self._executor.submit(self._call, lambda c: self._write(c, remove=instance),
                                  True, lambda: bool(wrote))

    def _holder(self, conn: sqlite3.Connection, inst: Instance, *,
                claim: bool = False) -> str | None:
        """The service of a live entry of ``inst``'s id that is another service's, else
        ``None``. The file keys entries by instance id alone (its primary key, which older
        versions read and write), so writing ``inst`` would replace that service's entry.
        Live as :meth:`_read` judges it: on this boot's clock for a row stamped with this
        boot id and time namespace, on the wall clock otherwise. A renewal (not a
        ``claim``) that finds a live entry of its own service at another address warns
        (:meth:`_log_duplicate`): another live process registered the same id."""
        cols = "service, expires_at, host, port" + (
            ", boot_id, boot_expires_at, boot_wall_expires_at" if self._has_boot else "")
        row = conn.execute(f"SELECT {cols} FROM instances WHERE instance_id = ?",
                           (inst.instance_id,)).fetchone()
        if row is None:
            return None
        same = row[0] == inst.service
        if same and (claim or (row[2], row[3]) == (inst.host, inst.port)):
            return None
        opts = self.options
        if (self._has_boot and self._boot_key is not None and row[4] == self._boot_key
                and row[6] == row[1]):
            assert opts.boot_clock is not None
            alive = row[5] > opts.boot_clock()
        else:
            alive = row[1] > opts.clock()
        if not alive:
            return None
        if same:  # its own renewal replaced by another process's: both are written on
            self._log_duplicate(inst, f"{row[2]}:{row[3]}")
            return None
        return str(row[0])

    def _log_duplicate(self, inst: Instance, found: str) -> None:
        """Warn that a live entry of ``inst``'s id and service holds another address
        (``found``) when its renewal comes: two live processes register one id, and the
        entry flips between them at each heartbeat. Once per id and address a minute."""
        if not due_to_log(self._duplicate_logged, (inst.service, inst.instance_id, found),
                          _UNUSABLE_LOG_EVERY_S):
            return
        _log.warning("instance id registered by another process too: its entry flips "
                     "between their addresses at each heartbeat; give each its own id",
                     service=inst.service, instance_id=inst.instance_id,
                     address=f"{inst.host}:{inst.port}", found=found,
                     path=str(self.options.path))

    def _upsert(self, conn: sqlite3.Connection, inst: Instance, *,
                claim: bool = False) -> None:
        """Write ``inst`` with a fresh expiry: ``expires_at`` on the wall clock (what older
        meshkit versions read) and, if this process has a boot clock and the file its
        columns, the boot stamp (module docstring, "Clocks").

        An id a live entry of another service holds is not written: a ``claim``
        (:meth:`register`) raises :class:`RegistryError` naming that service; a heartbeat
        leaves the entry to its holder (written again once that one is gone), so two
        services never flip one entry between them.
        """
        holder = self._holder(conn, inst, claim=claim)
        if holder is not None:
            if claim:
                raise RegistryError(
                    f"local registry {str(self.options.path)!r}: instance id "
                    f"{inst.instance_id!r} is registered by service {holder!r}; the local "
                    f"registry keys entries by instance id alone, so registering it for "
                    f"{inst.service!r} would replace that entry: give each service's "
                    "instance its own id (etcd keeps <service>/<id> apart)")
            return
        opts = self.options
        expires_at = opts.clock() + opts.ttl_s
        values = (inst.instance_id, inst.service, inst.host, inst.port,
                  json.dumps(list(inst.tags)), json.dumps(dict(inst.meta), sort_keys=True),
                  inst.weight, expires_at)
        if self._has_boot:
            assert opts.boot_clock is not None
            conn.execute(_UPSERT_STAMPED, (*values, self._boot_key,
                                           opts.boot_clock() + opts.ttl_s, expires_at))
        else:  # an older file not upgraded yet, or no boot clock: as older versions write
            conn.execute(_UPSERT, values)
        if self._has_tombstones:  # registered again after a deregistration
            # its own service's tombstone only: another service's (that service
            # deregistered the id, which then went to this one) still tells its watches
            # that its instance left
            conn.execute("DELETE FROM deregistered WHERE instance_id = ? AND service = ?",
                         (inst.instance_id, inst.service))

    def _gc(self, conn: sqlite3.Connection) -> None:
        """Delete rows dead (or deregistered) for ``_GC_TTLS`` TTLs (their owners are gone
        for good), judged as :meth:`_read` judges them: on this boot's clock for rows
        stamped with this boot id and time namespace, on the wall clock for the others
        (another boot id included: module docstring, "Clocks"). Tombstones: wall clock."""
        self._gc_at = time.monotonic()
        opts = self.options
        horizon = opts.clock() - _GC_TTLS * opts.ttl_s
        if self._has_boot:
            assert opts.boot_clock is not None
            conn.execute(_SWEEP_STAMPED, {
                "wall": horizon, "boot": opts.boot_clock() - _GC_TTLS * opts.ttl_s,
                "key": self._boot_key})
        else:
            conn.execute("DELETE FROM instances WHERE expires_at < ?", (horizon,))
        if self._has_tombstones:
            conn.execute("DELETE FROM deregistered WHERE at < ?", (horizon,))

    def _write(self, conn: sqlite3.Connection, *instances: Instance, gc: bool = False,
               remove: Instance | None = None, claim: bool = False) -> None:
        """One write transaction: upsert ``instances``, delete ``remove`` (leaving a
        tombstone, so that watches keeping endpoints after a fault drop it at once), stamp
        ``last_write`` (its counter changes, so SQLite cannot skip the write even with
        nothing else to do), and collect garbage if ``gc`` (or if it is due: at most once
        per ``ttl_s``)."""
        if not self._has_boot and self._boot_key is not None:  # an older file: upgrade
            self._has_boot = _add_boot_columns(conn, write=True)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for inst in instances:
                self._upsert(conn, inst, claim=claim)
            if remove is not None:
                # only its own service's entry: never one another service holds
                conn.execute("DELETE FROM instances WHERE instance_id = ? AND service = ?",
                             (remove.instance_id, remove.service))
                if self._has_tombstones:
                    conn.execute(
                        "INSERT INTO deregistered (instance_id, service, at) VALUES (?,?,?)"
                        " ON CONFLICT(instance_id) DO UPDATE SET service=excluded.service,"
                        " at=excluded.at",
                        (remove.instance_id, remove.service, self.options.clock()))
            if self._has_last_write:
                conn.execute(
                    "INSERT INTO last_write (id, seq, written_at) VALUES (0, 1, ?)"
                    " ON CONFLICT(id) DO UPDATE SET seq = seq + 1,"
                    " written_at = max(written_at, excluded.written_at)",
                    (self.options.clock(),),
                )
            if gc or time.monotonic() - self._gc_at >= self.options.ttl_s:
                self._gc(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _probe(self, conn: sqlite3.Connection) -> None:
        """The write probe: a write transaction with nothing to upsert."""
        self._write(conn, gc=True)

    def _log_unusable(self, service: str, instance_id: object, exc: BaseException) -> None:
        """Warn that a row of ``service`` is skipped: once per row, then at most every
        ``_UNUSABLE_LOG_EVERY_S`` seconds. Only the ids and the error's type are logged: the
        error's message may quote the row's values (meta may hold secrets)."""
        now = time.monotonic()
        key = (service, str(instance_id))
        logged = self._unusable_logged
        if now - logged.get(key, -float("inf")) < _UNUSABLE_LOG_EVERY_S:
            return
        for stale in [k for k, at in logged.items() if now - at >= _UNUSABLE_LOG_EVERY_S]:
            del logged[stale]
        logged[key] = now
        _log.warning("skipping unusable local registry entry", service=service,
                     instance_id=key[1][:128], error=type(exc).__name__,
                     path=str(self.options.path))

    def _read(self, conn: sqlite3.Connection, service: str, *,
              with_seq: bool = False) -> _Snapshot:
        """The entries of ``service``: live ones, expired ones not yet collected, and, if
        there are expired ones (or ``with_seq``), the registry's ``last_write`` time and
        counter. No write.

        A row is live if its expiry is ahead: on this boot's clock if it carries a boot
        stamp of this boot id and time namespace, else on the wall clock (another boot id
        included: module docstring, "Clocks")."""
        now = self.options.clock()
        key = self._boot_key
        if not self._has_boot and key is not None:  # an older file: upgraded since?
            self._has_boot = _add_boot_columns(conn, write=False)
        boot_now = 0.0
        if self._has_boot:
            assert self.options.boot_clock is not None
            boot_now = self.options.boot_clock()
            query = _SELECT_STAMPED
        else:
            key, query = None, _SELECT
        live: list[Instance] = []
        expired: list[tuple[Instance, float]] = []
        for r in conn.execute(query, (service,)):
            try:
                inst = Instance(service=service, instance_id=r[0], host=r[1], port=r[2],
                                tags=_json_list(r[3]), meta=json.loads(r[4]),
                                weight=r[5])
                expires_at = r[6]
                if key is not None and r[7] == key and r[9] == expires_at:
                    alive = r[8] > boot_now  # our boot id and time namespace: boot clock
                else:  # no stamp, a stale one, another time namespace or boot id: wall
                    alive = expires_at > now
            except (ConfigError, ValueError, TypeError, AttributeError) as exc:
                self._log_unusable(service, r[0], exc)
                continue
            if alive:
                live.append(inst)
            else:
                expired.append((inst, expires_at))
        written_at: float | None = None
        seq: int | None = None
        if (expired or with_seq) and self._has_last_write:
            row = conn.execute(
                "SELECT written_at, seq FROM last_write WHERE id = 0").fetchone()
            if row is not None:
                written_at, seq = float(row[0]), int(row[1])
        gone: frozenset[str] = frozenset()
        if self._has_tombstones:
            gone = frozenset(r[0] for r in conn.execute(
                "SELECT instance_id FROM deregistered WHERE service = ?", (service,)))
        return _Snapshot(frozenset(live), tuple(expired), written_at, gone, seq)

    def _grace_s(self) -> float:
        grace_s = self.options.fault_grace_s
        assert grace_s is not None
        return grace_s

    def _reopened_within_grace(self) -> bool:
        """Whether the file was found deleted or replaced at most ``fault_grace_s`` ago."""
        at = self._reopened_at
        return at is not None and time.monotonic() - at <= self._grace_s()

    async def _suspect(self) -> bool:
        """Whether the registry's view may lack live instances because of a fault, so that
        a watch keeps endpoints it does not list: this process's writes fail (its owners'
        entries, and everyone's if the fault is shared, are not renewed), or they failed
        and work again since at most ``fault_grace_s``, or the file was found deleted or
        replaced at most ``fault_grace_s`` ago (the owners have not re-registered yet).
        Whether this process can write: its latest write outcome if at most two heartbeat
        intervals old, else a write probe's; one probe at a time (in each event loop)."""
        grace_s = self.options.fault_grace_s
        assert grace_s is not None
        reopened_at = self._reopened_at
        if reopened_at is not None and time.monotonic() - reopened_at <= grace_s:
            return True
        loop = asyncio.get_running_loop()
        held = self._probe_lock
        if held is None or held[0] is not loop:
            held = self._probe_lock = (loop, asyncio.Lock())
        interval = self.options.heartbeat_interval_s
        assert interval is not None
        async with held[1]:
            ok = self._tracker.recent_write(2 * interval)
            if ok is None:
                try:
                    await self._run(self._probe, write=True)
                    ok = True
                except RegistryError:
                    ok = False
        return not ok or self._tracker.writes_recovered_within(grace_s)

    # -- Registry protocol --------------------------------------------------------------
    async def register(self, instance: Instance) -> None:
        """Write ``instance`` with a fresh TTL and start its heartbeat task.

        Registering an id again replaces its entry. An id a live entry of *another*
        service holds (in this process or another) is refused: the file keys entries by
        instance id alone, so the write would replace that service's entry (one pod
        registering two services under ``$POD_NAME``); etcd keeps ``<service>/<id>`` apart.
        The old heartbeat is cancelled and
        awaited *before* the new write: the worker thread runs writes in the order they
        were submitted, so an old-instance write already under way lands before the new
        one, never after it (it would bring back the old address, tags or meta until the
        next heartbeat). If the new write fails, or register() is cancelled, the old
        heartbeat is started again, so the previous registration is still kept alive; a
        register() of a new id cancelled with its write under way has that entry deleted
        (no entry without a heartbeat is left listed for ``ttl_s``). A heartbeat of
        another event loop (an earlier ``asyncio.run()``: already ended with its loop) is
        dropped, not awaited; one of a loop still running in another thread is cancelled
        there.

        Raises:
            RegistryError: the registry file cannot be written, or the id is held by a live
                entry of another service (both named; nothing is changed); :meth:`close`
                ran while it wrote (no heartbeat is started: the entry expires as close()
                leaves every other one); :meth:`deregister` of the instance ran meanwhile
                (the entry is deleted again and no heartbeat started: a drain racing a
                start leaves the instance deregistered).
        """
        key = instance.instance_id
        mine = self._owned.get(key)
        if mine is not None and mine.service != instance.service:
            raise RegistryError(
                f"local registry {str(self.options.path)!r}: instance id {key!r} is "
                f"registered by service {mine.service!r}; the local registry keys entries "
                f"by instance id alone, so registering it for {instance.service!r} would "
                "replace that entry: give each service's instance its own id (etcd keeps "
                "<service>/<id> apart)")
        # an item once a deregister() of the instance runs meanwhile (kept only while
        # this register() runs: no table of every id ever deregistered)
        pending, withdrawn = (key, instance.service), list[bool]()
        self._registering.setdefault(pending, []).append(withdrawn)
        try:
            old = _stop_elsewhere(self._heartbeats.pop(key, None))
            wrote: list[bool] = []  # an item once the write is done

            def write(conn: sqlite3.Connection) -> None:
                self._write(conn, instance, claim=True)
                wrote.append(True)

            try:
                if old is not None:
                    old.cancel()
                    # asyncio.wait: a cancellation of register() itself still propagates.
                    await asyncio.wait([old])
                await self._run(write, write=True)
            except BaseException as exc:
                previous = self._owned.get(key)
                if (old is not None and previous is not None and not self._closed
                        and key not in self._heartbeats):
                    self._heartbeats[key] = asyncio.create_task(
                        self._heartbeat(previous), name=f"meshkit-heartbeat-{key}")
                elif previous is None and isinstance(exc, asyncio.CancelledError):
                    # cancelled with its write under way (done in the worker thread all the
                    # same): its caller takes the instance for not registered
                    self._withdraw(instance, wrote)
                raise
            if self._closed:
                # close() ran while the write was under way: it stopped every heartbeat, and
                # one started now would run for good; the entry expires as close() leaves
                # every other one
                raise RegistryError(f"cannot keep {key!r} alive: local registry "
                                    f"{str(self.options.path)!r} is closed")
            if withdrawn:
                # deregister() of the id ran meanwhile: its delete may have been done before
                # this write (submitted while the old heartbeat ended), so delete again; no
                # heartbeat may bring the instance back
                await self._run(lambda c: self._write(c, remove=instance), write=True)
                raise RegistryError(
                    f"local registry {str(self.options.path)!r}: instance {key!r} was "
                    "deregistered while register() ran; it is not registered")
        finally:
            tokens = [t for t in self._registering.pop(pending, []) if t is not withdrawn]
            if tokens:
                self._registering[pending] = tokens
        self._owned = {**self._owned, key: instance}
        stale = self._heartbeats.pop(key, None)  # a concurrent register() of the same id
        if stale is not None:
            stale.cancel()
        self._heartbeats[key] = asyncio.create_task(
            self._heartbeat(instance), name=f"meshkit-heartbeat-{key}"
        )

    async def _heartbeat(self, instance: Instance) -> None:
        interval = self.options.heartbeat_interval_s
        assert interval is not None
        key, me = instance.instance_id, asyncio.current_task()
        while True:
            await asyncio.sleep(interval)
            # An upsert, not an update: a row purged while we were stalled comes back.
            # A failure is logged once per outage by _run and counted in status().
            # Written only while this task is still the id's heartbeat when the worker
            # thread takes the write: deregister(), register() or close() in another
            # thread's loop cancel it in its loop without waiting, and a write it submitted
            # meanwhile must not put back the deregistered or replaced instance.
            try:
                await self._run(lambda c: self._write(c, instance), write=True,
                                still=lambda: self._heartbeats.get(key) is me)
            except RegistryError:
                if self._closed:  # nothing to renew any more: end, not spin
                    return
            except _Stale:
                return

    async def deregister(self, instance: Instance) -> None:
        """Delete ``instance`` at once and stop its heartbeat; unknown ids are ignored, and
        so is an id another service's entry holds (only ``instance.service``'s is deleted).
        A heartbeat of another event loop still running (a server in another thread) is
        cancelled in that loop and not awaited; a write it still submits is not done.

        Raises:
            RegistryError: the registry file cannot be written.
        """
        mine = self._owned.get(instance.instance_id)
        if mine is None or mine.service == instance.service:  # not another service's id
            # a register() of it under way sees this and starts no heartbeat
            for withdrawn in self._registering.get(
                    (instance.instance_id, instance.service), ()):
                withdrawn.append(True)
            self._owned = {k: v for k, v in self._owned.items() if k != instance.instance_id}
            task = _stop_elsewhere(self._heartbeats.pop(instance.instance_id, None))
            if task is not None:
                await cancel_and_wait(task)
        await self._run(lambda c: self._write(c, remove=instance), write=True)

    async def instances(self, service: str) -> frozenset[Instance]:
        """The live instances of ``service`` now (one query, no watch).

        Raises:
            ConfigError: ``service`` is no non-empty string.
            RegistryError: the registry file cannot be read.
        """
        _check_service(service)
        return (await self._run(lambda c: self._read(c, service), write=False)).live

    async def services(self) -> frozenset[str]:
        """The names of the services with an entry now: a live instance, or one whose
        heartbeat lapsed and that is not collected yet (:meth:`failing`). One query.

        Raises:
            RegistryError: the registry file cannot be read.
        """
        def read(conn: sqlite3.Connection) -> frozenset[str]:
            return frozenset(r[0] for r in conn.execute("SELECT DISTINCT service FROM instances"))

        return await self._run(read, write=False)

    async def failing(self, service: str) -> frozenset[Instance]:
        """Instances of ``service`` whose heartbeat lapsed (their owner died or hangs) and
        that were not deregistered: watches no longer list them (but see the module
        docstring: during a registry fault a watch keeps some); they stay here until
        garbage collection (10 TTLs). A drained instance deregisters, so it is never here.
        One query.

        Raises:
            ConfigError: ``service`` is no non-empty string.
            RegistryError: the registry file cannot be read.
        """
        _check_service(service)
        snap = await self._run(lambda c: self._read(c, service), write=False)
        return _failing(snap)

    async def snapshot(self, service: str) -> ServiceSnapshot:
        """The live and the failing instances of ``service`` from one read of its rows
        (and its tombstones), at one time: ``live`` is the set a new :meth:`watch` yields
        first, ``failing`` what :meth:`failing` gives.

        ``live`` is :meth:`instances`'s view, fault rule included: during a registry fault
        (see the module docstring: this process cannot write, or could not at most
        ``fault_grace_s`` ago, or the file was replaced that recently) a new watch also
        keeps the entries that were live at the registry's last successful write, and so
        does ``live`` (they are in ``failing`` too, as :meth:`failing` reports them), so
        one-shot readers (``meshkit services``, ``prometheus-targets``) list what every
        client of the mesh calls. Nothing is written unless such an entry exists and this
        process has no write of its own from the last two heartbeat intervals: then one
        write probe tells whether writes fail, as a watch's (at most one per two
        heartbeat intervals).

        Raises:
            ConfigError: ``service`` is no non-empty string.
            RegistryError: the registry file cannot be read.
        """
        _check_service(service)
        snap = await self._run(lambda c: self._read(c, service), write=False)
        live = snap.live
        kept = _live_at_last_write(snap)
        if kept and await self._suspect():
            live = live.union(kept)
        return ServiceSnapshot(live, _failing(snap))

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        """Yield the live set of ``service`` now, then each time it changes.

        Polls every ``poll_interval_s`` (one SELECT). A failed read yields nothing: the last
        set stands, and before the first successful read there is none (the error shows in
        :meth:`status`). After a registry fault (see the module docstring) the watch keeps
        the endpoints of its last set that the registry no longer lists as live, unless
        they were deregistered, until ``fault_grace_s`` after the fault ended; a watch that
        starts during a fault keeps the entries that were live at the registry's last
        successful write.

        Raises:
            ConfigError: ``service`` is no non-empty string (at the first iteration).
        """
        _check_service(service)
        last: frozenset[Instance] | None = None
        poll_s = self.options.poll_interval_s
        me = next(self._watch_ids)
        try:
            async with contextlib.aclosing(self._poll(service, poll_s, me)) as polls:
                async for current in polls:
                    if current != last:
                        last = current
                        yield current
        finally:
            self._kept.pop((service, me), None)

    async def _poll(self, service: str, poll_s: float,
                    me: int) -> AsyncGenerator[frozenset[Instance], None]:
        """The body of :meth:`watch`: the set after each poll (``me`` numbers the watch).

        While it keeps endpoints because this process cannot write, it reads the
        registry's write counter at each poll: once others have written it for
        ``fault_grace_s`` (their first write seen that long ago, their latest at most
        ``max(fault_grace_s, 2 heartbeat intervals + a poll)`` ago), the fault is this
        process's own (a user or container given the file read-only), not the
        registry's, and the registry's view applies, but for this process's own
        instances (alive: it is their owner), as it does in the processes that write."""
        last: frozenset[Instance] | None = None
        interval = self.options.heartbeat_interval_s
        assert interval is not None
        recent_s = max(self._grace_s(), 2 * interval + poll_s)
        seq_seen: int | None = None
        # monotonic: others' first and latest writes seen while the watch keeps endpoints
        written_since: float | None = None
        advanced_at = 0.0
        while not self._closed:
            read = functools.partial(self._read, service=service,
                                     with_seq=bool(self._kept.get((service, me))))
            try:
                snap = await self._run(read, write=False)
            except RegistryError:  # reported by _run, once per outage
                await asyncio.sleep(poll_s)
                continue
            if snap.seq is not None:  # read only on a fault's path
                if seq_seen is not None and snap.seq != seq_seen:
                    advanced_at = time.monotonic()
                    if written_since is None:
                        written_since = advanced_at
                seq_seen = snap.seq
            current = snap.live
            listed = {i.instance_id for i in current}
            gone = snap.deregistered
            if last is not None:  # the last set's endpoints that are not live any more
                missing = [i for i in last
                           if i.instance_id not in listed and i.instance_id not in gone]
            else:  # a new watch: the entries live at the last write (none: an old file)
                missing = _live_at_last_write(snap)
            if missing and await self._suspect():
                now = time.monotonic()
                if (written_since is not None and now - written_since >= self._grace_s()
                        and now - advanced_at <= recent_s
                        and not self._reopened_within_grace()):
                    self._others_write_at = now  # for status()
                    # others write, this process cannot: its fault, not the registry's.
                    # Only what expired before the last write anyone made leaves (its
                    # owner did not renew while others wrote): an entry that expired
                    # since is no owner's death but maybe an outage of every writer
                    # begun meanwhile (the writes counted were before it)
                    owned, written_at = self._owned, snap.written_at
                    expiry = {i.instance_id: at for i, at in snap.expired}
                    missing = [i for i in missing
                               if ((o := owned.get(i.instance_id)) is not None
                                   and o.service == service)
                               or (written_at is not None and i.instance_id in expiry
                                   and expiry[i.instance_id] > written_at)]
                kept = len(missing)
            else:
                kept = 0
            if not kept:  # others' writes are looked at afresh at the next fault
                seq_seen = written_since = None
            if kept:
                current = current.union(missing)
            was = self._kept.get((service, me), 0)
            if kept and not was:
                _log.info("registry fault: a watch keeps endpoints the registry does not "
                          "list until their owners renew them", service=service,
                          kept=sorted(i.instance_id for i in missing))
            elif was and not kept:
                _log.info("a watch no longer keeps endpoints the registry does not list",
                          service=service, dropped=sorted(i.instance_id for i in missing))
            self._kept[service, me] = kept
            last = current
            yield current
            await asyncio.sleep(poll_s)

    def status(self, service: str | None = None) -> RegistryStatus:
        """This registry's health as its own operations saw it (no I/O).

        Args:
            service: taken for the Consul and etcd registries' ``status(service)``
                (one call for any registry); every service here is read from one file,
                so the answer is the registry's whatever it names, but for
                ``kept_endpoints``: those ``service``'s own watches keep. Default None.

        ``readable``/``read_errors``: watch polls and :meth:`instances`; ``writable``/
        ``write_errors``: register, heartbeats, deregister and write probes; ``reopened``:
        times the file was found deleted or replaced and reopened; ``last_error`` names the
        file (not for gRPC callers); ``kept_endpoints``: endpoints the watches keep after a
        fault although the registry does not list them (see the module docstring).

        A process with nothing registered whose writes (its write probes) fail while its
        watches have seen others write since (a read-only client) reports ``writable``
        None, no fault: it has nothing to write and the registry works for those who do
        (``write_errors`` and ``last_error`` still tell).
        """
        st = self._tracker.status()
        since = self._tracker.write.since_mono
        at = self._others_write_at
        if (st.writable is False and at is not None and since is not None and at >= since
                and not self._owned and not self._heartbeats):
            st = dataclasses.replace(st, writable=None,
                                     failing_since_s=self._tracker.read.since_wall)
        return dataclasses.replace(st, kept_endpoints=kept_count(self._kept, service))

    async def close(self) -> None:
        """Stop heartbeats and close the file. Registrations expire after their TTL.
        Heartbeats of other event loops still running are cancelled in their loops (not
        awaited; a write they still submit is not done). Idempotent; a close() cancelled
        while it waits for the heartbeats still closes the file."""
        if self._closed:
            return
        self._closed = True
        self._probe_lock = None  # its loop: not kept past close
        tasks = [t for t in map(_stop_elsewhere, list(self._heartbeats.values()))
                 if t is not None]
        self._heartbeats.clear()
        for t in tasks:
            t.cancel()

        def shut() -> None:
            with self._lock:
                self._drop()

        try:
            for t in tasks:
                await cancel_and_wait(t)
        finally:
            # also when close() is cancelled (a second one returns at once): the file is
            # closed by the worker thread, after the jobs queued before
            closing = self._executor.submit(shut)
            self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closing)

    def __repr__(self) -> str:
        return f"LocalRegistry(path={str(self.options.path)!r}, ttl_s={self.options.ttl_s})"


#: Every registry of the process: each starts afresh in a forked child
#: (:meth:`LocalRegistry._forget_parent`).
_registries = reset_in_forked_child(LocalRegistry)

#: The registries' locks held across a fork, per forking thread (:func:`_before_fork`):
#: two threads forking at once each release their own only.
_held_for_fork = threading.local()


def _before_fork() -> None:
    """Hold every registry's lock across ``os.fork()``, so that no SQLite operation is
    under way in a worker thread when the process is copied. SQLite keeps the locks a
    process holds on a file in process-wide tables (https://sqlite.org/howtocorrupt.html
    section 2.6) and a child inherits them while fcntl's locks are not inherited: a child
    forked during a write (a heartbeat) took the write lock for its own for good, and
    every write it made failed "database is locked". An operation holds the lock for
    one try at a time (SQLite's busy handler waits ``_SQLITE_BUSY_WAIT_S`` at most, and
    the retries let go of it as they sleep: a fork does not wait for another process's
    lock to be let go); each lock is waited for at most ``busy_timeout_s`` and a second,
    then the fork goes on without it, as before. The locks are taken in one order (by ``id``), so
    two threads forking at once wait for each other rather than each holding a lock the
    other waits for."""
    held: list[threading.Lock] = []
    _held_for_fork.locks = held
    for reg in sorted(_registries, key=id):
        lock = reg._lock
        # at most what a lock can wait (threading.TIMEOUT_MAX: busy_timeout_s=1e10, "for
        # ever", made acquire() raise OverflowError and the fork hold nothing)
        if lock.acquire(timeout=min(reg.options.busy_timeout_s + 1.0,
                                    threading.TIMEOUT_MAX)):
            held.append(lock)


def _after_fork_in_parent() -> None:
    held: list[threading.Lock] = getattr(_held_for_fork, "locks", [])
    while held:
        held.pop().release()


def _after_fork_in_child() -> None:
    _held_for_fork.locks = []  # each registry has a new lock (_forget_parent)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
