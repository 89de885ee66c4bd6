"""A forked child holds none of its parent's Redis connections open.

The child's copies of the parent's Redis sockets are made to name ``/dev/null`` when it
starts (ae71c3f): without that, a worker that never uses the limiter kept each of the
parent's connections open for its whole life, so one the parent closed (``aclose()``
at shutdown, a connection it dropped after an error) stayed connected on Redis (a
client of ``maxclients`` per worker and connection, never freed until the workers end).
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

port, name = int(sys.argv[1]), sys.argv[2]
limiter = StorageLimiter(RateLimitOptions(
    default_rule="100/minute", strategy="fixed-window", key_prefix=name,
    storage_uri=f"async+redis://127.0.0.1:{port}?client_name={name}"))

def named_clients() -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"CLIENT LIST\\r\\n")
        data = b""
        while b"\\r\\n" not in data:
            data += s.recv(65536)
        head, _, data = data.partition(b"\\r\\n")  # $<length of the list>
        while len(data) < int(head[1:]):
            data += s.recv(65536)
    return data.decode().count(f"name={name} ")

loop = asyncio.new_event_loop()
assert loop.run_until_complete(limiter.check("/p.S/M", "k")) is None
print("before:", named_clients(), flush=True)
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # a worker that never counts: waits for the parent, then ends
    os.close(write)
    os.read(read, 1)
    os._exit(0)
os.close(read)
loop.run_until_complete(limiter.aclose())
deadline = time.monotonic() + 3
while (left := named_clients()) and time.monotonic() < deadline:
    time.sleep(0.02)
print("after close:", left, flush=True)
os.write(write, b"x")
os.waitpid(pid, 0)
"""


def test_the_parent_closing_its_connection_closes_it_while_a_child_lives() -> None:
    """The parent's one Redis connection, closed while a forked child lives, is gone
    from Redis' client list at once (it stayed while the child lived)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    name = f"fks-{uuid.uuid4().hex}"
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {_ROOT!r})\n{SCRIPT}",
         str(SHARED_REDIS_PORT), name],
        capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines == {"before": "1", "after close": "0"}, done.stdout + done.stderr[-3000:]
