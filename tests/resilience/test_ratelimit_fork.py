"""A Redis limiter used before an ``os.fork()`` keeps working in the parent and the child.

The child's first hit found the Redis driver's connection pool made by another process
(coredis checks the pid) and disconnected its copies of the parent's connections
through asyncio: the transport's close removed the socket from the epoll instance the
child's copy of the parent's loop shares with the parent, so the parent never read that
connection again. Its next hit waited ``storage_timeout_s`` out and was a storage
failure (refused ``UNAVAILABLE`` under ``deny``, admitted unlimited under ``allow``,
one step to an open breaker) for every worker forked. The child now lets go of its
copies of those sockets without asyncio (they name ``/dev/null`` in it, as the
registries' children do) and starts a pool of its own. So a worker that never uses the
limiter holds none of the parent's connections open: one the parent closes (``aclose()``
at shutdown) is gone from Redis, not kept connected for the worker's whole life.
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
import asyncio, os, socket, sys, time
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.support.forking import report_from_workers

port, prefix = int(sys.argv[1]), sys.argv[2]

def named_clients(name: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"CLIENT LIST\\r\\n")
        data = b""
        while b"\\r\\n" not in data:
            data += s.recv(65536)
        head, _, data = data.partition(b"\\r\\n")  # $<length of the list>
        while len(data) < int(head[1:]):
            data += s.recv(65536)
    return data.decode().count(f"name={name} ")

for strategy in ("fixed-window", "sliding-window-counter"):
    name = f"{prefix}-{strategy}"
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/minute", strategy=strategy, key_prefix=name,
        storage_uri=f"async+redis://127.0.0.1:{port}?client_name={name}",
        storage_timeout_s=1.0, on_storage_error="deny"))

    async def use() -> str:
        results = [await limiter.check("/p.S/M", "k") for _ in range(2)]
        return ",".join("ok" if r is None else r.code.name for r in results)

    loop = asyncio.new_event_loop()
    print(f"{strategy} parent before:", loop.run_until_complete(use()), flush=True)
    report_from_workers(lambda: asyncio.run(use()), workers=2)
    print(f"{strategy} parent after:", loop.run_until_complete(use()), flush=True)
    # a worker that never counts lives on while the parent closes its connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    loop.run_until_complete(limiter.aclose())
    deadline = time.monotonic() + 3
    while (left := named_clients(name)) and time.monotonic() < deadline:
        time.sleep(0.02)
    print(f"{strategy} connections after close:", left, flush=True)
    os.write(write, b"x")
    os.waitpid(pid, 0)
    loop.close()
"""


def test_a_redis_limiter_works_in_the_parent_after_its_workers_used_it() -> None:
    """Per strategy (fixed window, sliding window counter): parent, then two forked
    workers, then the parent again: every hit admitted, none a storage failure
    (UNAVAILABLE under deny); then the parent closes its connection while a forked
    worker lives, and Redis' client list has it gone at once (without the child's
    dup2 to /dev/null it stayed while the worker lived)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {_ROOT!r})\n{SCRIPT}",
         str(SHARED_REDIS_PORT), f"fk-{uuid.uuid4().hex}"],
        capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if ": " in line]
    expected = []
    for strategy in ("fixed-window", "sliding-window-counter"):
        expected += [f"{strategy} parent before: ok,ok", "worker0: ok,ok", "worker1: ok,ok",
                     f"{strategy} parent after: ok,ok",
                     f"{strategy} connections after close: 0"]
    assert lines == expected, done.stdout + done.stderr[-3000:]
