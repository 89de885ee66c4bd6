"""A Redis Cluster limiter (``async+redis+cluster://``) on a new event loop counts at once.

5dcac89 lets go of the driver's connections of the old loop when a limiter is first used
on another loop (and ae71c3f in a forked child), reading the pool's
``_available_connections`` and ``_in_use_connections``; coredis' cluster pool keeps its
connections per node under other names, so nothing was let go of: the first hit on each
new loop went down the old loop's connection and waited ``storage_timeout_s`` out
(measured: ``UNAVAILABLE`` after 0.5 s under ``deny``, a storage failure logged).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit_new_loop import check_each_new_loop_counts_at_once
from tests.support.ports import free_port
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above, so at most 55,535) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair for a cluster node")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[int]:
    """A one-node Redis Cluster of its own holding every slot; its port."""
    server = shutil.which("redis-server")
    if server is None:
        skip_or_fail("no redis-server binary")
        return
    port = _cluster_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1",
                             "--cluster-enabled", "yes", "--cluster-node-timeout", "100",
                             "--dir", str(tmp_path),
                             "--cluster-config-file", str(tmp_path / "nodes.conf"),
                             "--save", "", "--appendonly", "no",
                             "--logfile", str(tmp_path / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cli(*args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              text=True, check=False).stdout

    try:
        deadline = time.monotonic() + 10
        while "cluster_state:ok" not in (info := cli("cluster", "info")):
            assert time.monotonic() < deadline, (
                f"redis cluster not ok in 10 s: {info}, "
                f"{(tmp_path / 'redis.log').read_text()[-2000:]}")
            if "cluster_slots_assigned:0" in info:
                cli("cluster", "addslotsrange", "0", "16383")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_each_new_loop_counts_at_once_on_a_cluster(cluster: int) -> None:
    """Three loops in turn, the first two closed without aclose(): every check admitted
    well within storage_timeout_s (2 s), the breaker never counting a failure."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/minute", strategy="fixed-window",
        storage_uri=f"async+redis+cluster://127.0.0.1:{cluster}",
        key_prefix=f"cl-{uuid.uuid4().hex}", storage_timeout_s=2.0, on_storage_error="deny"))

    check_each_new_loop_counts_at_once(limiter, bound_s=1.5)
