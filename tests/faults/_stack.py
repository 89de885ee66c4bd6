"""The ecom stack for one fault scenario: fresh temp dir, certificates, registry, processes.

:func:`running_stack` builds everything a scenario needs and always takes it down again:
a temp dir, the mesh CA and workload certificates (:func:`examples.ecom.demo.make_certificates`),
a local registry in that dir, optionally a PostgreSQL schema and a Redis reached through a
:class:`~tests.support.tcp_proxy.TcpProxy`, and the service processes (``userd-1`` and
``orderd-1..n``) started by :class:`FaultStack`, the demo's :class:`~examples.ecom.demo.Stack`
with per-instance database URLs and environment. On exit (also on error and Ctrl-C) every
paused process is resumed, every process stopped (SIGTERM, then SIGKILL after the grace),
the proxies closed, the schema dropped, file modes restored and the temp dir removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from examples.ecom.demo import REPO, SERVICES, Proc, Stack, make_certificates
from tests.support.tcp_proxy import TcpProxy

PG_HOST, PG_PORT, PG_DB, PG_USER = "127.0.0.1", 5432, "test", "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class EnvironmentProblem(RuntimeError):
    """Something the scenario needs from the machine is missing (PostgreSQL, Redis, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StackSpec:
    """What a scenario's stack is made of.

    Args:
        orderd: number of order-service instances (all on one database).
        database: ``"sqlite"`` (one file shared by the orderd instances) or ``"postgres"``
            (a fresh schema in the local PostgreSQL, reached through a TcpProxy).
        redis: orderd keeps its rate-limit counts in the local Redis, reached through a
            TcpProxy (``--rate-limit-storage async+redis://...``); else ``memory://``.
        ttl_s: registry TTL, seconds (heartbeats every ``ttl_s / 3``).
    """

    orderd: int = 2
    database: str = "sqlite"
    redis: bool = False
    ttl_s: float = 2.0


class FaultStack(Stack):
    """:class:`~examples.ecom.demo.Stack` plus what fault scenarios need of it.

    ``start`` takes a database URL and extra environment per instance (the demo's takes
    one URL for every service and no environment), does not ask for trace files (spans
    to disk cost CPU the workload needs), and wraps the process in ``setpriv
    --pdeathsig KILL`` where that exists, so a harness killed with SIGKILL takes its
    services along. ``pause``/``resume`` send SIGSTOP/SIGCONT; ``stop_all`` resumes
    paused processes first so they can drain.
    """

    def __init__(self, workdir: Path, registry_uri: str, cert_dir: Path) -> None:
        super().__init__(workdir, registry_uri, None, cert_dir)
        self.paused: set[str] = set()
        self._setpriv = shutil.which("setpriv")

    async def start(self, service: str, instance_id: str, timeout_s: float = 30.0, *,
                    db: str | None = None, env: dict[str, str] | None = None) -> Proc:
        """Start one instance on ``db`` (default its own SQLite file per service) with
        ``env`` added, and wait for its READY line."""
        db = db or f"sqlite:///{self.workdir / (service + '.db')}"
        full_env = {**os.environ, "MESHKIT_REGISTRY": self.registry_uri,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("MESHKIT_TRACE_FILE", None)
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        wrapper = [self._setpriv, "--pdeathsig", "KILL", "--"] if self._setpriv else []
        assert self.cert_dir is not None
        proc = await asyncio.create_subprocess_exec(
            *wrapper, sys.executable, "-m", SERVICES[service], "--instance-id", instance_id,
            "--db", db, "--cert-dir", str(self.cert_dir), cwd=REPO, env=full_env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        p = Proc(service, instance_id, proc, self.workdir / f"{instance_id}.log")
        self.procs[instance_id] = p
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pumps.append(asyncio.create_task(self._pump(p, ready)))
        try:
            p.address = await asyncio.wait_for(asyncio.shield(ready), timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            tail = p.log.read_text(errors="replace").splitlines()[-8:] if p.log.exists() else []
            raise RuntimeError(f"{instance_id} did not start; {p.log} ends with:\n"
                               + "\n".join(tail)) from exc
        return p

    def pid(self, instance_id: str) -> int:
        """The process id of an instance."""
        return self.procs[instance_id].proc.pid

    def pause(self, instance_id: str) -> None:
        """SIGSTOP an instance."""
        os.kill(self.pid(instance_id), signal.SIGSTOP)
        self.paused.add(instance_id)

    def resume(self, instance_id: str) -> None:
        """SIGCONT an instance paused by :meth:`pause`."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid(instance_id), signal.SIGCONT)
        self.paused.discard(instance_id)

    async def stop_all(self, grace_s: float = 10.0) -> dict[str, int | None]:
        """Resume paused instances, then the demo's stop (SIGTERM, SIGKILL after grace)."""
        for iid in list(self.paused):
            self.resume(iid)
        return await super().stop_all(grace_s)


@dataclass
class StackEnv:
    """A running scenario stack and everything around it."""

    spec: StackSpec
    workdir: Path
    cert_dir: Path
    registry_dir: Path
    registry_uri: str
    stack: FaultStack
    orderd_db: str
    pg_schema: str | None = None
    pg_proxy: TcpProxy | None = None
    redis_proxy: TcpProxy | None = None
    locked_paths: list[tuple[Path, int]] = field(default_factory=list)
    immutable_paths: list[Path] = field(default_factory=list)
    #: workload users signed up on this stack (:class:`tests.faults._workload.User`, with
    #: their tokens, valid an hour): a later workload on a shared stack calls as them
    #: instead of signing up new ones (two scrypt hashes each: about 4 s for 16 users on a
    #: loaded 2-core machine)
    users: list[Any] = field(default_factory=list)

    @property
    def registry_file(self) -> Path:
        """The registry's SQLite file."""
        return self.registry_dir / "registry.db"

    @property
    def orderd_ids(self) -> list[str]:
        """Instance ids of the order service, in start order."""
        return [i for i, p in self.stack.procs.items() if p.service == "orderd"]

    def log(self, instance_id: str) -> Path:
        """An instance's log file (stdout and stderr)."""
        return self.stack.procs[instance_id].log

    def chmod(self, path: Path, mode: int) -> None:
        """Change a mode, remembering the old one for :meth:`restore_modes`."""
        self.locked_paths.append((path, stat.S_IMODE(path.stat().st_mode)))
        path.chmod(mode)

    def make_immutable(self, path: Path) -> bool:
        """``chattr +i``: writes fail even through file handles opened before (which a mode
        change does not reach); ``False`` where the file system or tool does not allow it."""
        chattr = shutil.which("chattr")
        if chattr is None:
            return False
        done = subprocess.run([chattr, "+i", str(path)], capture_output=True, timeout=10,
                              check=False).returncode == 0
        if done:
            self.immutable_paths.append(path)
        return done

    def restore_modes(self) -> None:
        """Undo every :meth:`make_immutable` and :meth:`chmod`, newest first (missing
        files are skipped)."""
        while self.immutable_paths:
            path = self.immutable_paths.pop()
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=10,
                           check=False)
        while self.locked_paths:
            path, mode = self.locked_paths.pop()
            with contextlib.suppress(FileNotFoundError):
                path.chmod(mode)


_PID_FILE = "harness.pid"
_PREFIX = "meshkit-chaos-"


def _force_remove(path: Path) -> None:
    """Remove a scenario dir even if a fault left it immutable or without write bits."""
    chattr = shutil.which("chattr")
    if chattr is not None:
        subprocess.run([chattr, "-R", "-i", str(path)], capture_output=True, timeout=30,
                       check=False)
    for d, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(d, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale() -> list[Path]:
    """Remove the temp dirs of earlier runs whose harness died without cleaning up
    (SIGKILL); returns them. A dir whose harness still runs is left alone."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            pid = int((d / _PID_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being set up right now
        try:
            alive = b"tests.faults" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            alive = False
        if not alive:
            _force_remove(d)
            removed.append(d)
    return removed


async def _postgres_up() -> None:
    try:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER,
                                     database=PG_DB, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise EnvironmentProblem(f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable: "
                                 f"{exc!r}") from exc
    await conn.close()


async def _redis_up() -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(REDIS_HOST, REDIS_PORT), 5)
        writer.write(b"PING\r\n")
        answer = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    except (OSError, TimeoutError) as exc:
        raise EnvironmentProblem(f"Redis at {REDIS_HOST}:{REDIS_PORT} unreachable: "
                                 f"{exc!r}") from exc
    if not answer.startswith(b"+PONG"):
        raise EnvironmentProblem(f"Redis at {REDIS_HOST}:{REDIS_PORT} answered {answer!r}")


async def drop_schema(schema: str) -> None:
    """Drop a scenario's PostgreSQL schema (bounded)."""
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DB,
                                 timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', timeout=10)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running_stack(spec: StackSpec, *, keep_workdir: bool = False
                        ) -> AsyncIterator[StackEnv]:
    """Build and start a stack per ``spec``; tear everything down on exit.

    Raises:
        EnvironmentProblem: PostgreSQL or Redis is needed and unreachable.
        RuntimeError: a process did not start (its log tail in the message).
    """
    if spec.database == "postgres":
        await _postgres_up()
    if spec.redis:
        await _redis_up()
    workdir = Path(tempfile.mkdtemp(prefix=_PREFIX))
    (workdir / _PID_FILE).write_text(str(os.getpid()))
    registry_dir = workdir / "registry"
    uri = f"local://{registry_dir}?ttl_s={spec.ttl_s}&poll_interval_s=0.1"
    cert_dir = workdir / "certs"
    env = StackEnv(spec=spec, workdir=workdir, cert_dir=cert_dir, registry_dir=registry_dir,
                   registry_uri=uri, stack=FaultStack(workdir, uri, cert_dir),
                   orderd_db=f"sqlite:///{workdir / 'orderd.db'}")
    try:
        make_certificates(cert_dir)
        orderd_env: dict[str, str] = {}
        if spec.database == "postgres":
            env.pg_proxy = TcpProxy(PG_HOST, PG_PORT)
            await env.pg_proxy.start()
            port = env.pg_proxy.port
            env.pg_schema = f"chaos_{uuid.uuid4().hex[:12]}"
            env.orderd_db = (f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_DB}"
                             f"?schema={env.pg_schema}")
        if spec.redis:
            env.redis_proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
            await env.redis_proxy.start()
            port = env.redis_proxy.port
            orderd_env["MESHKIT_RATELIMIT_STORAGE"] = f"async+redis://127.0.0.1:{port}"
        try:
            async with asyncio.TaskGroup() as tg:  # one failing start cancels the others
                tg.create_task(env.stack.start("userd", "userd-1"))
                for n in range(1, spec.orderd + 1):
                    tg.create_task(env.stack.start("orderd", f"orderd-{n}", db=env.orderd_db,
                                                   env=orderd_env))
        except ExceptionGroup as eg:
            raise eg.exceptions[0] from eg
        yield env
    finally:
        env.restore_modes()
        await env.stack.stop_all(grace_s=10.0)
        for proxy in (env.pg_proxy, env.redis_proxy):
            if proxy is not None:
                await proxy.close()
        if env.pg_schema is not None:
            with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError):
                await drop_schema(env.pg_schema)
        if keep_workdir:
            (workdir / _PID_FILE).unlink(missing_ok=True)  # kept on purpose: not stale
        else:
            _force_remove(workdir)
