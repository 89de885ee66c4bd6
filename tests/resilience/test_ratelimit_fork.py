"""A Redis limiter used before an ``os.fork()`` keeps working in the parent and the child.

The child's first hit found the Redis driver's connection pool made by another process
(coredis checks the pid) and disconnected its copies of the parent's connections
through asyncio: the transport's close removed the socket from the epoll instance the
child's copy of the parent's loop shares with the parent, so the parent never read that
connection again. Its next hit waited ``storage_timeout_s`` out and was a storage
failure (refused ``UNAVAILABLE`` under ``deny``, admitted unlimited under ``allow``,
one step to an open breaker) for every worker forked. The child now lets go of its
copies of those sockets without asyncio (they name ``/dev/null`` in it, as the
registries' children do) and starts a pool of its own.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

_ROOT = str(Path(__file__).resolve().parents[2])

SCRIPT = """
import asyncio, sys, time
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.support.forking import report_from_workers

limiter = StorageLimiter(RateLimitOptions(
    default_rule="100/minute", strategy=sys.argv[1], storage_uri=sys.argv[2],
    key_prefix=sys.argv[3], storage_timeout_s=1.0, on_storage_error="deny"))

async def use() -> str:
    results = [await limiter.check("/p.S/M", "k") for _ in range(2)]
    return ",".join("ok" if r is None else r.code.name for r in results)

loop = asyncio.new_event_loop()
print("parent before:", loop.run_until_complete(use()), flush=True)
report_from_workers(lambda: asyncio.run(use()), workers=2)
print("parent after:", loop.run_until_complete(use()), flush=True)
loop.run_until_complete(limiter.aclose())
"""


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter"])
def test_a_redis_limiter_works_in_the_parent_after_its_workers_used_it(
        strategy: str) -> None:
    """Parent, then two forked workers, then the parent again: every hit admitted, none a
    storage failure (UNAVAILABLE under deny)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {_ROOT!r})\n{SCRIPT}",
         strategy, f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
         f"fk-{uuid.uuid4().hex}"],
        capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines == {"parent before": "ok,ok", "worker0": "ok,ok", "worker1": "ok,ok",
                     "parent after": "ok,ok"}, done.stdout + done.stderr[-3000:]
