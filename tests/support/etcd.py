"""Real etcd processes for tests and the benchmark: one node or a cluster on loopback.

Each member listens on free 127.0.0.1 ports with its own data directory under ``base_dir``,
with short Raft timings (heartbeat 50 ms, election timeout 500 ms) so that a killed leader
is replaced within about a second. Nothing here touches a system etcd (port 2379).
The binary comes from Debian's ``etcd-server`` (``scripts/install-etcd.sh``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.skips import skip_or_fail

__all__ = ["EtcdCluster", "EtcdTls", "etcd_binary", "free_port", "require_etcd_binary",
           "running_etcd"]


def etcd_binary() -> str | None:
    """Path of the ``etcd`` server binary, or None (Debian installs it in /usr/bin)."""
    return shutil.which("etcd")


def require_etcd_binary() -> str:
    """The etcd binary; skips the test without one (fails it under CI=true)."""
    path = etcd_binary()
    if path is None:
        skip_or_fail("no etcd binary on PATH (scripts/install-etcd.sh installs etcd-server)")
        raise AssertionError("unreachable")
    return path


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for a TLS etcd: its certificate and key, and the CA that signed the
    clients' certificates (``--client-cert-auth``)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)


class EtcdCluster:
    """``size`` etcd members on loopback (``size=1``: a single node).

    Args:
        binary: the etcd executable.
        base_dir: where data directories and logs go (a test's ``tmp_path``).
        size: number of members (1 or 3 in practice).
        tls: serve clients over TLS with client-certificate authentication.
    """

    def __init__(self, binary: str, base_dir: Path, size: int = 1,
                 tls: EtcdTls | None = None) -> None:
        self.binary = binary
        self.tls = tls
        base_dir.mkdir(parents=True, exist_ok=True)
        self.scheme = "https" if tls else "http"
        self.members = [
            _Member(name=f"m{i}", client_port=0, peer_port=0,
                    data_dir=base_dir / f"etcd-m{i}", log=base_dir / f"etcd-m{i}.log")
            for i in range(size)
        ]
        self._assign_ports()

    def _assign_ports(self) -> None:
        """Give every member free ports and the command line that names them."""
        binary, tls, scheme = self.binary, self.tls, self.scheme
        for m in self.members:
            m.client_port, m.peer_port = free_port(), free_port()
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        for m in self.members:
            client = f"{scheme}://127.0.0.1:{m.client_port}"
            m.args = [
                binary, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"meshkit-test-{id(self)}",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--snapshot-count", "10000", "--log-level", "warn",
            ]
            if tls is not None:
                m.args += ["--cert-file", str(tls.cert_file), "--key-file", str(tls.key_file),
                           "--client-cert-auth", "--trusted-ca-file", str(tls.client_ca_file)]

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of the members, in order."""
        return [f"{self.scheme}://127.0.0.1:{m.client_port}" for m in self.members]

    def uri(self, **query: object) -> str:
        """An ``etcd://`` (or ``etcd+https://``) registry URI naming every member."""
        hosts = ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)
        scheme = "etcd+https" if self.tls else "etcd"
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{scheme}://{hosts}" + (f"?{q}" if q else "")

    def start_member(self, i: int) -> None:
        """Start member ``i`` (again, on the same ports and data directory)."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            return
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(m.args, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` and reap it."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(timeout=10)
        m.proc = None

    def wipe(self, i: int) -> None:
        """Delete member ``i``'s data directory (kill it first): a replaced store."""
        shutil.rmtree(self.members[i].data_dir, ignore_errors=True)

    def _health(self, i: int) -> bool:
        m = self.members[i]
        if self.tls is not None:  # a plain HTTP probe cannot pass client-cert auth
            return m.proc is not None and m.proc.poll() is None and _port_open(m.client_port)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{m.client_port}/health",
                                        timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy_blocking(self, indices: list[int] | None = None,
                              timeout_s: float = 20.0) -> None:
        """Wait until members ``indices`` (default: all running) report healthy (they have
        a leader). Blocks the calling thread.

        Raises:
            RuntimeError: a member exited, or not healthy within ``timeout_s`` (with logs).
        """
        idx = indices if indices is not None else [
            i for i, m in enumerate(self.members) if m.proc is not None]
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [self.members[i].name for i in idx
                    if (p := self.members[i].proc) is not None and p.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd member(s) {dead} exited; see {self.members[0].log}")
            if all(self._health(i) for i in idx):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(m.log.read_text(errors="replace")[-2000:]
                                 for m in self.members if m.log.exists())
                raise RuntimeError(f"etcd not healthy within {timeout_s}s:\n{logs}")
            time.sleep(0.05)

    async def wait_healthy(self, indices: list[int] | None = None,
                           timeout_s: float = 20.0) -> None:
        """:meth:`wait_healthy_blocking` in a thread."""
        await asyncio.to_thread(self.wait_healthy_blocking, indices, timeout_s)

    def _port_taken(self) -> bool:
        """After a failed first start: whether a member found a port taken (a free port
        picked here was bound by another process before etcd bound it); then every
        member is killed and wiped and given new ports, for another try."""
        if not any(m.log.exists() and "address already in use" in m.log.read_text(
                errors="replace") for m in self.members):
            return False
        for i, m in enumerate(self.members):
            self.kill(i)
            self.wipe(i)
            m.log.write_bytes(b"")
        self._assign_ports()
        return True

    def start_blocking(self) -> EtcdCluster:
        """Start every member and wait (blocking) until the cluster is healthy (on new
        ports, up to three tries, when a port was taken meanwhile)."""
        for attempt in range(3):
            for i in range(len(self.members)):
                self.start_member(i)
            try:
                self.wait_healthy_blocking()
                return self
            except RuntimeError:
                if attempt == 2 or not self._port_taken():
                    raise
        return self

    async def start(self) -> EtcdCluster:
        """:meth:`start_blocking` in a thread."""
        return await asyncio.to_thread(self.start_blocking)

    def leader(self) -> int:
        """Index of the current leader (plain HTTP only), from any running member's status."""
        for m in self.members:
            if m.proc is None:
                continue
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{m.client_port}/v3/maintenance/status", data=b"{}",
                    method="POST")
                with urllib.request.urlopen(req, timeout=1) as resp:
                    status = json.loads(resp.read())
            except (OSError, ValueError):
                continue
            leader_id = status.get("leader")
            for j, other in enumerate(self.members):
                if other.proc is None:
                    continue
                try:
                    req = urllib.request.Request(
                        f"http://127.0.0.1:{other.client_port}/v3/maintenance/status",
                        data=b"{}", method="POST")
                    with urllib.request.urlopen(req, timeout=1) as resp:
                        if json.loads(resp.read())["header"]["member_id"] == leader_id:
                            return j
                except (OSError, ValueError, KeyError):
                    continue
        raise RuntimeError("no etcd member knows a leader")

    def post(self, i: int, path: str, body: dict[str, object]) -> dict[str, object]:
        """POST ``body`` to member ``i``'s gateway at ``/v3<path>`` (plain HTTP only)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.members[i].client_port}/v3{path}",
            data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            out: dict[str, object] = json.loads(resp.read())
            return out

    def call(self, path: str, body: dict[str, object], token: str | None = None) -> Any:
        """POST ``body`` to the first member's gateway at ``/v3<path>`` with etcd's auth
        ``token`` (the ``Authorization`` header) when given; the decoded JSON answer."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.members[0].client_port}/v3{path}",
            data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": token} if token else {})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def add_root(self, password: str) -> None:
        """Add the user ``root`` with ``password`` and the role ``root`` (auth still off:
        :meth:`enable_auth`)."""
        self.call("/auth/role/add", {"name": "root"})
        self.call("/auth/user/add", {"name": "root", "password": password})
        self.call("/auth/user/grant", {"user": "root", "role": "root"})

    def enable_auth(self) -> None:
        """Turn etcd's authentication on (``etcdctl auth enable``)."""
        self.call("/auth/enable", {})

    def close(self) -> None:
        """Kill every member."""
        for i in range(len(self.members)):
            self.kill(i)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def running_etcd(base_dir: Path, size: int = 1) -> Iterator[EtcdCluster]:
    """``size`` real etcd members under ``base_dir``, started (the binary required: a
    skip, or a failure under ``CI=true``) and closed at the end."""
    cluster = EtcdCluster(require_etcd_binary(), base_dir, size=size)
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()
