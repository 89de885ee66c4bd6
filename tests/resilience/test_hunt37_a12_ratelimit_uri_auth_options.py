"""A Redis storage URI's ``?password=``, ``?username=``, ``?host=`` or ``?port=`` is
refused, not ignored.

coredis builds the connection from the URI's user info and ``host:port`` and overwrites
those query options with them (``url_options.update(host=..., port=..., username=...,
password=...)``), so ``async+redis://127.0.0.1:6379?password=s3cret`` connected without
a password: against a Redis with ``requirepass`` every hit failed ``NOAUTH``, the limit
failing open (or every call ``UNAVAILABLE`` with ``on_storage_error="deny"``);
``?host=10.0.0.7`` counted in the Redis of the authority instead, all without a word.
The options now refuse them, naming where the value goes; the password in the user info
works.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.support.ports import free_port
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

_PW = "s3cret-redis-pw"


@pytest.fixture
def redis_with_password() -> Iterator[int]:
    """A Redis of its own that requires the password ``_PW``; its port."""
    server = shutil.which("redis-server")
    if server is None:
        skip_or_fail("no redis-server binary")
        return
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--requirepass", _PW],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "PONG" not in subprocess.run(
                ["redis-cli", "-p", str(port), "-a", _PW, "--no-auth-warning", "ping"],
                capture_output=True, text=True, check=False).stdout:
            assert time.monotonic() < deadline, "redis not up in 10 s"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("query", "option"), [
    (f"?password={_PW}", "password"), ("?username=limiter", "username"),
    (f"?username=limiter&password={_PW}", "password"), ("?host=10.0.0.7", "host"),
    ("?port=6380", "port"), (f"?db=2&password={_PW}", "password")])
def test_an_option_coredis_overwrites_is_refused(query: str, option: str) -> None:
    """The error names the option and where its value belongs, never the password."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second",
                         storage_uri=f"async+redis://127.0.0.1:6379/0{query}")
    text = str(caught.value)
    assert repr(option) in text and "ignores" in text, text
    assert _PW not in text, text


async def test_the_password_in_the_user_info_counts(redis_with_password: int) -> None:
    """Against a Redis that requires a password, ``:pw@host:port`` counts every hit (the
    second of a "1/minute" caller refused RESOURCE_EXHAUSTED), where ``?password=`` was
    taken and every hit failed."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/minute", on_storage_error="deny", key_prefix="a12-auth",
        storage_timeout_s=5.0,  # first connect on a loaded box
        storage_uri=f"async+redis://:{_PW}@127.0.0.1:{redis_with_password}"))
    try:
        assert await limiter.check("/a.B/C", "caller") is None
        refused = await limiter.check("/a.B/C", "caller")
        assert refused is not None and refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await asyncio.wait_for(limiter.aclose(), 10)
