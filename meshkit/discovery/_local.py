"""The embedded registry: one SQLite file shared by every process on a machine.

Liveness is a heartbeat: each registered instance row carries ``expires_at`` (wall clock,
seconds) that its owner pushes forward every ``heartbeat_interval_s``; a row not renewed
within ``ttl_s`` is dead to watchers, so a process killed with SIGKILL drops out within its
TTL. Watchers poll every ``poll_interval_s`` (default 0.25 s) and yield only on change.
SQLite runs in WAL mode with a busy timeout so many processes can read and write at once.

SQLite's busy timeout does not cover every contended case: switching a new file to WAL while
another process does the same, the last connection's WAL cleanup at close, and WAL recovery
after a crash return ``SQLITE_BUSY`` at once (https://sqlite.org/wal.html, "Sometimes
queries return SQLITE_BUSY in WAL mode"). Every operation here is idempotent, so a busy
error is retried with a short jittered backoff until ``busy_timeout_s`` has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from meshkit.discovery._types import Instance
from meshkit.errors import ConfigError, RegistryError

__all__ = ["LocalOptions", "LocalRegistry", "default_local_path"]

_log = structlog.get_logger("meshkit.discovery.local")
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    tags        TEXT NOT NULL,
    meta        TEXT NOT NULL,
    weight      INTEGER NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_service ON instances (service, expires_at);
"""


def default_local_path() -> Path:
    """The default registry file: ``$MESHKIT_LOCAL_DIR/registry.db``, else
    ``<tmp>/meshkit-<uid>/registry.db`` (one registry per user per machine)."""
    base = os.environ.get("MESHKIT_LOCAL_DIR") or os.path.join(
        tempfile.gettempdir(), f"meshkit-{os.getuid()}"
    )
    return Path(base) / "registry.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalOptions:
    """Options of :class:`LocalRegistry`.

    Args:
        path: the SQLite file; a directory means ``<dir>/registry.db``. Default
            :func:`default_local_path`. Parent directories are created.
        ttl_s: how long a registration lives without a heartbeat, seconds (default 3.0).
        heartbeat_interval_s: seconds between heartbeats; default ``ttl_s / 3``.
        poll_interval_s: how often watchers look for changes, seconds (default 0.25).
        clock: wall-clock source in seconds (injectable for tests), default ``time.time``.
        busy_timeout_s: how long one operation waits on a locked file before it fails
            with :class:`~meshkit.errors.RegistryError`, seconds (default 5.0). Covers
            SQLite's busy handler and the busy errors it does not handle (see the module
            docstring).

    Raises:
        ConfigError: a value is out of range (quoted in the message).
    """

    path: Path = field(default_factory=default_local_path)
    ttl_s: float = 3.0
    heartbeat_interval_s: float | None = None
    poll_interval_s: float = 0.25
    clock: Callable[[], float] = time.time
    busy_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        path = Path(self.path)
        if path.is_dir() or path.suffix == "":
            path = path / "registry.db"
        object.__setattr__(self, "path", path)
        if not self.ttl_s > 0:
            raise ConfigError(f"ttl_s must be > 0, got {self.ttl_s!r}")
        hb = self.heartbeat_interval_s
        if hb is None:
            object.__setattr__(self, "heartbeat_interval_s", self.ttl_s / 3)
        elif not 0 < hb < self.ttl_s:
            raise ConfigError(
                f"heartbeat_interval_s must be in (0, ttl_s={self.ttl_s}), got {hb!r}"
            )
        if not self.poll_interval_s > 0:
            raise ConfigError(f"poll_interval_s must be > 0, got {self.poll_interval_s!r}")
        if not self.busy_timeout_s > 0:
            raise ConfigError(f"busy_timeout_s must be > 0, got {self.busy_timeout_s!r}")


def _is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...)."""
    code = getattr(exc, "sqlite_errorcode", None)  # set by sqlite3 since Python 3.11
    return isinstance(code, int) and (code & 0xFF) == sqlite3.SQLITE_BUSY


class LocalRegistry:
    """A :class:`~meshkit.discovery.Registry` in one SQLite file, for processes on one machine.

    Use ``local:///path/to/dir`` with :func:`~meshkit.discovery.registry_from_uri`, or build
    it directly::

        reg = LocalRegistry(LocalOptions(path=Path("/tmp/mesh"), ttl_s=3))
        await reg.register(Instance(service="orderd", instance_id="o1", host="127.0.0.1",
                                    port=50051))
        async for instances in reg.watch("orderd"): ...

    Args:
        options: :class:`LocalOptions`; defaults apply when omitted.

    Raises:
        RegistryError: (from the methods) the file cannot be opened or written.
    """

    def __init__(self, options: LocalOptions | None = None) -> None:
        self.options = options or LocalOptions()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._heartbeats: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        # A thread of our own: heartbeats must not queue behind the application's
        # asyncio.to_thread work (password hashing, file I/O) in the default pool.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshkit-local")

    # -- sqlite plumbing (runs in a worker thread) ---------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            path = self.options.path
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=self.options.busy_timeout_s,
                                   check_same_thread=False, isolation_level=None)
            try:
                # Read first: switching to WAL takes an exclusive lock, needed only once.
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            deadline = time.monotonic() + self.options.busy_timeout_s
            backoff_s = 0.002
            with self._lock:
                while True:
                    try:
                        return fn(self._connect())
                    except sqlite3.OperationalError as exc:
                        if not _is_busy(exc) or time.monotonic() >= deadline:
                            raise
                    time.sleep(backoff_s * random.uniform(0.5, 1.5))
                    backoff_s = min(backoff_s * 2, 0.05)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise RegistryError(f"local registry {str(self.options.path)!r}: {exc}") from exc

    def _upsert(self, conn: sqlite3.Connection, inst: Instance) -> None:
        conn.execute(
            "INSERT INTO instances (instance_id, service, host, port, tags, meta, weight,"
            " expires_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(instance_id) DO UPDATE SET"
            " service=excluded.service, host=excluded.host, port=excluded.port,"
            " tags=excluded.tags, meta=excluded.meta, weight=excluded.weight,"
            " expires_at=excluded.expires_at",
            (inst.instance_id, inst.service, inst.host, inst.port, json.dumps(list(inst.tags)),
             json.dumps(dict(inst.meta), sort_keys=True), inst.weight,
             self.options.clock() + self.options.ttl_s),
        )

    def _select(self, conn: sqlite3.Connection, service: str) -> frozenset[Instance]:
        now = self.options.clock()
        rows = conn.execute(
            "SELECT instance_id, host, port, tags, meta, weight FROM instances"
            " WHERE service = ? AND expires_at > ?",
            (service, now),
        ).fetchall()
        # Rows dead for 10 TTLs are garbage: their owners are gone for good.
        conn.execute("DELETE FROM instances WHERE expires_at < ?", (now - 10 * self.options.ttl_s,))
        return frozenset(
            Instance(service=service, instance_id=r[0], host=r[1], port=r[2],
                     tags=tuple(json.loads(r[3])), meta=json.loads(r[4]), weight=r[5])
            for r in rows
        )

    # -- Registry protocol --------------------------------------------------------------
    async def register(self, instance: Instance) -> None:
        """Write ``instance`` with a fresh TTL and start its heartbeat task.

        Raises:
            RegistryError: the registry file cannot be written.
        """
        await self._run(lambda c: self._upsert(c, instance))
        old = self._heartbeats.pop(instance.instance_id, None)
        if old is not None:
            old.cancel()
        self._heartbeats[instance.instance_id] = asyncio.create_task(
            self._heartbeat(instance), name=f"meshkit-heartbeat-{instance.instance_id}"
        )

    async def _heartbeat(self, instance: Instance) -> None:
        interval = self.options.heartbeat_interval_s
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            try:
                # An upsert, not an update: a row purged while we were stalled comes back.
                await self._run(lambda c: self._upsert(c, instance))
            except RegistryError as exc:
                _log.warning("heartbeat failed", instance_id=instance.instance_id, error=str(exc))

    async def deregister(self, instance: Instance) -> None:
        """Delete ``instance`` at once and stop its heartbeat; unknown ids are ignored.

        Raises:
            RegistryError: the registry file cannot be written.
        """
        task = self._heartbeats.pop(instance.instance_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._run(
            lambda c: c.execute("DELETE FROM instances WHERE instance_id = ?",
                                (instance.instance_id,))
        )

    async def instances(self, service: str) -> frozenset[Instance]:
        """The live instances of ``service`` now (one query, no watch).

        Raises:
            RegistryError: the registry file cannot be read.
        """
        return await self._run(lambda c: self._select(c, service))

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        """Yield the live set of ``service`` now, then each time it changes.

        Polls every ``poll_interval_s``; a read error is logged and the last set is kept.
        """
        last: frozenset[Instance] | None = None
        failing = False
        while not self._closed:
            try:
                current = await self._run(lambda c: self._select(c, service))
                if failing:
                    _log.info("local registry readable again", service=service)
                    failing = False
            except RegistryError as exc:
                if not failing:
                    _log.warning("local registry watch failed; keeping last endpoints",
                                 service=service, error=str(exc))
                failing = True
                current = last if last is not None else frozenset()
            if current != last:
                last = current
                yield current
            await asyncio.sleep(self.options.poll_interval_s)

    async def close(self) -> None:
        """Stop heartbeats and close the file. Registrations expire after their TTL."""
        self._closed = True
        tasks = list(self._heartbeats.values())
        self._heartbeats.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

        def shut() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"LocalRegistry(path={str(self.options.path)!r}, ttl_s={self.options.ttl_s})"


