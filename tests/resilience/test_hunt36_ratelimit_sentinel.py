"""A Redis limiter through Sentinel (``async+redis+sentinel://``) on a new event loop, and
closed.

5dcac89 lets go of the driver's connections of the old loop when a limiter is first used
on another loop (and ae71c3f in a forked child), but only of the client to the Redis
primary: through Sentinel the driver first asks a sentinel for the primary's address
down the client to the sentinels, whose connection was the old loop's, so the first hit
on each new loop waited ``storage_timeout_s`` out (measured: ``UNAVAILABLE`` after 0.5 s
under ``deny``, a storage failure logged, a step to an open breaker).
"""

from __future__ import annotations

import shutil
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
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[int]:
    """A Redis of its own and a Sentinel monitoring it as ``primary``; the Sentinel's
    port."""
    server = shutil.which("redis-server")
    if server is None:
        skip_or_fail("no redis-server binary")
        return
    redis_port, sentinel_port = free_port(), free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor primary 127.0.0.1 {redis_port} 1\n")
    procs = [subprocess.Popen([server, "--port", str(redis_port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([server, str(config), "--sentinel"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        def up() -> bool:
            out = subprocess.run(["redis-cli", "-p", str(sentinel_port), "sentinel",
                                  "get-master-addr-by-name", "primary"],
                                 capture_output=True, text=True, check=False).stdout
            ping = subprocess.run(["redis-cli", "-p", str(redis_port), "ping"],
                                  capture_output=True, text=True, check=False).stdout
            return str(redis_port) in out and "PONG" in ping

        deadline = time.monotonic() + 10
        while not up():
            assert time.monotonic() < deadline, "redis and sentinel not up in 10 s"
            time.sleep(0.02)
        yield sentinel_port
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def test_each_new_loop_counts_at_once_through_sentinel(sentinel: int) -> None:
    """Three loops in turn, the first two closed without aclose(): every check admitted
    well within storage_timeout_s (2 s), the breaker never counting a failure."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/minute", strategy="fixed-window",
        storage_uri=f"async+redis+sentinel://127.0.0.1:{sentinel}/primary",
        key_prefix=f"st-{uuid.uuid4().hex}", storage_timeout_s=2.0, on_storage_error="deny"))

    check_each_new_loop_counts_at_once(limiter, bound_s=1.5)


def _clients(port: int) -> int:
    """The connections a Redis or Sentinel on ``port`` lists, the asking one included."""
    out = subprocess.run(["redis-cli", "-p", str(port), "client", "list"],
                         capture_output=True, text=True, check=False).stdout
    return len(out.splitlines())


async def test_aclose_closes_the_connection_to_the_sentinel(sentinel: int) -> None:
    """After a hit the Sentinel lists the limiter's connection; aclose() closes it (it
    closed only the one to the primary before: the sentinel's stayed open, an fd and a
    Sentinel client per limiter closed, for the process' life)."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/minute", strategy="fixed-window",
        storage_uri=f"async+redis+sentinel://127.0.0.1:{sentinel}/primary",
        key_prefix=f"st-{uuid.uuid4().hex}", storage_timeout_s=2.0, on_storage_error="deny"))
    alone = _clients(sentinel)  # redis-cli's own
    assert await limiter.check(METHOD, "k") is None
    assert _clients(sentinel) == alone + 1
    await limiter.aclose()
    await until(lambda: _clients(sentinel) == alone, timeout_s=5,
                what="the limiter's sentinel connection closed")
