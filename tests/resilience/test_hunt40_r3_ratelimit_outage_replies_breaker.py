"""Review of d99ec2c2: Redis error replies that mean the storage cannot serve anyone
still open the rate limit's storage breaker, and so does a hung Redis.

d99ec2c2 takes a reply about one caller's key (``WRONGTYPE``, ``ERR value is not an
integer`` and kin) for that caller's failure alone, not the breaker's. The replies a
Redis gives every caller while it cannot serve (loading its dataset, a replica whose
master is down, a busy script, out of memory, a failing save, a read-only replica, an
authentication required, ``-ERR`` of any other kind) and a server that accepts and
never answers must still count: ``breaker_failures`` (3) of them open it. A fake Redis
on loopback answers every command with the reply (the client's handshake included).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter

pytestmark = [
    pytest.mark.timeout(60),
    # coredis asks MODULE LIST at connect: the fake answers it with the same error
    pytest.mark.filterwarnings("ignore:Unable to determine module support:UserWarning"),
]

METHOD = "/a.B/C"

REPLIES = {
    "loading": b"-LOADING Redis is loading the dataset in memory\r\n",
    "masterdown": b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set"
    b" to 'no'.\r\n",
    "busy": b"-BUSY Redis is busy running a script.\r\n",
    "oom": b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
    "misconf": b"-MISCONF Redis is configured to save RDB snapshots, but it's currently"
    b" unable to persist to disk.\r\n",
    "readonly": b"-READONLY You can't write against a read only replica.\r\n",
    "noauth": b"-NOAUTH Authentication required.\r\n",
    "err-other": b"-ERR Error running script (call to f_0): @user_script:1: out of memory\r\n",
    "hung": b"",
}


@contextlib.asynccontextmanager
async def _fake_redis(reply: bytes) -> AsyncIterator[int]:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if reply:  # one reply per command (RESP arrays start with '*')
                    writer.write(reply * max(1, data.count(b"*")))
                    await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for w in writers:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


@pytest.mark.parametrize("kind", sorted(REPLIES))
@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
async def test_an_outage_reply_still_opens_the_breaker(kind: str, strategy: str) -> None:
    async with _fake_redis(REPLIES[kind]) as port:
        limiter = StorageLimiter(
            RateLimitOptions(
                default_rule="3/hour",
                strategy=strategy,  # type: ignore[arg-type]
                on_storage_error="deny",
                storage_timeout_s=0.5,
                breaker_failures=3,
                breaker_open_s=30.0,
                breaker_max_open_s=60.0,
                storage_uri=f"async+redis://127.0.0.1:{port}",
            )
        )
        try:
            for n in range(3):
                refused = await asyncio.wait_for(limiter.check(METHOD, f"c{n}"), 20)
                assert refused is not None and refused.code.name == "UNAVAILABLE", refused
            assert limiter.breaker.is_open and limiter.breaker.opened == 1, limiter.breaker.opened
        finally:
            await asyncio.wait_for(limiter.aclose(), 20)
