"""Rate limiting: policy units, then RateLimitInterceptor on a real in-process echo server,
with in-memory counts, the shared Redis on 127.0.0.1:6379, and a private redis-server that
is killed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from limits import parse as parse_limit
from limits.storage import MemoryStorage
from structlog.testing import capture_logs

from meshkit.errors import ConfigError
from meshkit.resilience._ratelimit_policy import (
    OutageTracker,
    RuleTable,
    peer_host,
    redact_uri,
    retry_after_s,
)
from meshkit.resilience.ratelimit import (
    _EXPIRE,
    _SCHEDULE_SWEEP,
    _SYNC_STRATEGY_CLASSES,
    OnStorageError,
    RateLimitInterceptor,
    RateLimitOptions,
    StorageBreaker,
    StorageLimiter,
    Strategy,
    SweepThrottledMemoryStorage,
    by_metadata,
)
from tests.support.echo import handler, method
from tests.support.ports import free_port
from tests.support.skips import skip_or_fail
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

_REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
SHARED_REDIS_PORT = 6379


# --- helpers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_server(options: RateLimitOptions, instance_id: str = "e1", *,
                      limiter: StorageLimiter | None = None,
                      ) -> AsyncIterator[grpc.aio.Channel]:
    """An echo server on 127.0.0.1:0 behind a RateLimitInterceptor (with ``limiter``, when
    given: a test reads its counters); yields a channel to it."""
    interceptor = RateLimitInterceptor(options, limiter=limiter)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((handler(instance_id),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)
        await interceptor.aclose()


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def attempt(channel: grpc.aio.Channel, name: str = "Unary", user: str | None = None,
                  messages: int = 2) -> grpc.aio.AioRpcError | None:
    """Make one call of echo method ``name`` (streams carry ``messages`` messages); None if
    it succeeded, else its error."""
    md = None if user is None else (("x-user", user),)
    requests = [b"m%d" % i for i in range(messages)]
    try:
        if name in ("Unary", "Sleep"):
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                method(name))
            await unary(b"0", metadata=md, timeout=5)
        elif name == "ServerStream":
            server_stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = (
                channel.unary_stream(method(name)))
            responses = server_stream(b"%d" % messages, metadata=md, timeout=5)
            assert len([m async for m in responses]) == messages
        elif name == "ClientStream":
            client_stream: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = (
                channel.stream_unary(method(name)))
            answer = await client_stream(_requests(*requests), metadata=md, timeout=5)
            assert answer == b"e1|" + b",".join(requests)
        elif name == "Bidi":
            bidi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                method(name))
            echoes = bidi(_requests(*requests), metadata=md, timeout=5)
            assert len([m async for m in echoes]) == messages
        else:
            raise AssertionError(name)
    except grpc.aio.AioRpcError as err:
        return err
    return None


def assert_limited(err: grpc.aio.AioRpcError | None, name: str = "Unary") -> int:
    """Assert ``err`` is a rate-limit rejection of echo method ``name``; return retry-after."""
    assert err is not None, "call was not rejected"
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert method(name) in (err.details() or "")
    values = [v for k, v in err.trailing_metadata() or () if k == "retry-after"]
    assert len(values) == 1, err.trailing_metadata()
    assert isinstance(values[0], str) and values[0].isdigit()
    seconds = int(values[0])
    assert seconds >= 1
    return seconds


def unique_prefix() -> str:
    """A storage key prefix no other test run uses."""
    return f"meshkit-test-{uuid.uuid4().hex}"


def _breaker_limiter(proxy: TcpProxy, **breaker: float) -> StorageLimiter:
    """A limiter on Redis through ``proxy`` (100/second, 0.3 s storage timeout, deny on
    storage errors) with the storage-breaker options ``breaker``."""
    return StorageLimiter(RateLimitOptions(
        default_rule="100/second", storage_uri=f"async+redis://{proxy.address}",
        key_prefix=unique_prefix(), storage_timeout_s=0.3, on_storage_error="deny",
        **breaker))  # type: ignore[arg-type]


def redis_ping(port: int) -> bool:
    """True if a Redis answers PING on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_keys(pattern: str) -> dict[str, int]:
    """``{key: TTL in seconds}`` of the shared Redis' keys matching ``pattern`` (``KEYS``,
    then ``TTL`` each; -1: no expiry); empty when no Redis answers."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError), \
            socket.create_connection(("127.0.0.1", SHARED_REDIS_PORT), timeout=2) as s:
        reader = s.makefile("rb")

        def command(*words: str) -> bytes:
            s.sendall(b"*%d\r\n" % len(words) + b"".join(
                b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words))
            return reader.readline().rstrip(b"\r\n")

        count = int(command("KEYS", pattern)[1:])
        keys = [reader.readline() and reader.readline().rstrip(b"\r\n").decode()
                for _ in range(count)]
        for key in keys:
            found[key] = int(command("TTL", key)[1:])
    return found


class PrivateRedis:
    """A throw-away redis-server on a free port (no persistence) that tests may kill."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The limiter storage URI of this server."""
        return f"async+redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start redis-server on ``self.port`` (the same port on every restart)."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready(self) -> bool:
        """True once the server answers PING."""
        return redis_ping(self.port)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


class LatencyProxy:
    """A loopback TCP proxy to Redis that holds every client->server chunk for ``delay_s``
    (0 at first) before passing it on: a Redis whose every round trip takes ``delay_s``,
    as a Redis in another zone, or a busy one, is."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       slow: bool) -> None:
            try:
                while data := await src.read(65536):
                    if slow and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        for task in (asyncio.create_task(pump(reader, up_writer, True)),
                     asyncio.create_task(pump(up_reader, writer, False))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


_PER_MINUTE = re.compile(r"\d+ ?(/|per) ?(1 )?minute")


def _names_a_minute(test: Any) -> bool:
    """Whether a test's source (its decorators included) names a per-minute rule."""
    try:
        return _PER_MINUTE.search(inspect.getsource(test)) is not None
    except (OSError, TypeError):
        return True


@pytest.fixture(autouse=True)
def _clear_of_a_minutes_edge(request: pytest.FixtureRequest) -> None:
    """A fixed window's count starts again at each window's edge (per minute: at each
    minute of the wall clock), and the sliding window counter (the default strategy)
    weighs the last window's hits by the part of it still in view, so just past an edge
    a "1/minute" caller's one hit weighs 0.99 and a second call is admitted: a test that
    counts N calls and expects the next refused admitted it when the run crossed an edge
    (about 1 s of 60, more under load; twice in this session's runs). Each test but the
    moving window's (no edges) starts at least 5 s before the next minute's edge. Only
    tests whose text names a per-minute rule wait (the others count per second or hour,
    or nothing: up to 5 s of waiting bought them nothing)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("strategy") != "moving-window" and _names_a_minute(request.function):
        left = 60.0 - time.time() % 60.0
        if left < 5.0:
            time.sleep(left + 0.05)


@pytest.fixture
def shared_redis() -> str:
    """The URI of the shared Redis on 127.0.0.1:6379 (skip if absent; fail under CI)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    return f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}"


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A private redis-server, up and answering (skip if no binary; fail under CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("no redis-server binary on PATH")
        raise AssertionError("unreachable")
    redis = PrivateRedis(binary, tmp_path)
    redis.start()
    try:
        await until(redis.ready, timeout_s=10, what="private redis-server answering")
        yield redis
    finally:
        redis.kill()


# --- policy units -------------------------------------------------------------------------


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:10.0.0.7:51234", "10.0.0.7"),
    ("ipv6:[::1]:51234", "::1"),
    ("ipv6:%5B::1%5D:51234", "::1"),
    ("ipv6:%5Bfe80::1%5D:8080", "fe80::1"),
    ("unix:/run/app.sock", "unix:/run/app.sock"),
    ("weird", "weird"),
])
def test_peer_host_strips_scheme_and_port(peer: str, host: str) -> None:
    """peer_host keeps only the address of ipv4/ipv6 peers and returns other peers whole."""
    assert peer_host(peer) == host


def test_retry_after_rounds_up_to_whole_seconds_at_least_one() -> None:
    """retry_after_s is ceil(reset - now) and never below 1."""
    assert retry_after_s(100.2, 100.0) == 1
    assert retry_after_s(100.0, 100.0) == 1
    assert retry_after_s(90.0, 100.0) == 1
    assert retry_after_s(159.01, 100.0) == 60


def test_rule_table_precedence_exact_then_longest_glob_then_default() -> None:
    """An exact pattern beats globs, the longest glob beats shorter ones (mapping order
    does not matter), then the default."""
    table = RuleTable({
        "s.*/*": "3/second",  # 3 literal characters, listed first
        "/s.A/*": "2/second",  # 4
        "A/Get": "5/second",  # exact, short spelling
        "grpc.health.v1.Health/*": None,
    }, "1/second")
    exact, glob, shorter, exempt, default = (table.lookup(m) for m in (
        "/s.A/Get", "/s.A/List", "/s.B/Get", "/grpc.health.v1.Health/Check", "/t.C/D"))
    assert exact is not None and exact.pattern == "A/Get"
    assert glob is not None and glob.pattern == "/s.A/*"
    assert shorter is not None and shorter.pattern == "s.*/*"
    assert exempt is None
    assert default is not None and default.pattern == "<default>"
    assert table.lookup("/s.A/List") is glob  # cached: the same object, no re-resolution
    assert not table.empty and RuleTable({"*": None}, None).empty


@pytest.mark.parametrize("bad", ["/s.*", "OrderService", "", "a/b/c", "Svc/M "])
def test_rule_table_refuses_bad_patterns_quoted(bad: str) -> None:
    """A rules key that is not a method pattern fails at construction, quoting it."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(rules={bad: "1/second"})
    assert repr(bad) in str(info.value)


def test_rule_table_parses_multi_limit_rules() -> None:
    """A rule like '10 per minute;1000 per hour' becomes two limits checked together."""
    rule = RuleTable({}, "10 per minute;1000 per hour").lookup("/a.B/C")
    assert rule is not None
    assert [(i.amount, i.get_expiry()) for i in rule.items] == [(10, 60), (1000, 3600)]


def test_outage_tracker_reports_once_per_outage_with_duration() -> None:
    """failed() is True only for the first failure of an outage; succeeded() ends it once."""
    now = [10.0]
    tracker = OutageTracker(clock=lambda: now[0])
    assert tracker.succeeded() is None
    assert tracker.failed() is True
    assert tracker.failed() is False
    now[0] = 12.5
    assert tracker.succeeded() == pytest.approx(2.5)
    assert tracker.succeeded() is None
    assert tracker.failed() is True


def test_redact_uri_hides_password() -> None:
    """redact_uri replaces a URI's user info with *** and leaves other URIs alone."""
    assert redact_uri("async+redis://:s3cret@h:6379/0") == "async+redis://***@h:6379/0"
    assert redact_uri("async+redis://u:s3cret@h:6379") == "async+redis://***@h:6379"
    assert redact_uri("memory://") == "memory://"
    assert redact_uri("async+redis://h:6379/0?db=1") == "async+redis://h:6379/0?db=1"


@pytest.mark.parametrize("password", ["s3cr/et", "s3cr?et", "s3cr#et", "s3cr@et"])
def test_a_password_with_slash_question_mark_or_hash_is_never_shown(password: str) -> None:
    """``redact_uri`` masked only what ``urlsplit`` reads as a password, and urlsplit ends
    the netloc at the first '/', '?' or '#': ``redis://user:s3cr/et@h:6379`` had no
    password to it and was shown whole, by ``repr(RateLimitOptions)``, the storage_uri
    ConfigErrors and the limiter's storage name (generated and base64 passwords hold
    '/'). Everything after ``scheme://`` up to the last '@' is now masked, as
    ``shown_uri`` does for registry URIs; and the reason ``limits`` gives for a URI it
    cannot parse (``Port could not be cast to integer value as 's3cr'``) no longer
    quotes it either."""
    import traceback

    for uri in (f"redis://user:{password}@cache.internal:6379/0",
                f"async+redis://:{password}@127.0.0.1:6379"):
        assert "s3cr" not in redact_uri(uri), redact_uri(uri)
        assert redact_uri(uri).endswith("://***@" + uri.rpartition("@")[2])
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(storage_uri=f"bogus://:{password}@127.0.0.1:1")
    assert "s3cr" not in str(info.value) and "'bogus://***@127.0.0.1:1'" in str(info.value)
    if password != "s3cr@et":  # limits and coredis cannot read it: refused when built
        with pytest.raises(ConfigError) as info:
            RateLimitOptions(default_rule="10/second",
                             storage_uri=f"async+redis://:{password}@127.0.0.1:6379")
        assert "s3cr" not in str(info.value), str(info.value)
        password = "s3cr@et"
    options = RateLimitOptions(default_rule="10/second",
                               storage_uri=f"async+redis://:{password}@127.0.0.1:6379")
    assert "s3cr" not in repr(options), repr(options)
    try:  # coredis parses the URI itself: its complaint is quoted, scrubbed
        limiter = StorageLimiter(options)
    except ConfigError as exc:
        text = "".join(traceback.format_exception(exc))
    else:
        text = limiter._storage_name
    assert "s3cr" not in text, text


def test_a_secret_in_the_storage_uris_query_or_fragment_is_never_shown() -> None:
    """A token or password passed as a query value (``?password=...``, ``?token=...``:
    some Redis clients read them, coredis ignores them) or in a fragment was shown as
    written by ``repr(RateLimitOptions)``, the storage_uri ConfigErrors and the limiter's
    storage name. Every query value but the known harmless options (``db``, timeouts, TLS
    file paths, ...) and the fragment are now masked, as ``shown_uri`` does for registry
    URIs; a foreign library's message quoting one is scrubbed too."""
    from meshkit.resilience.ratelimit import _scrub_uri_secrets

    uri = "async+redis://127.0.0.1:6379/0?db=1&password=hunter22&token=t0k3n#fr4gment"
    shown = redact_uri(uri)
    assert shown == "async+redis://127.0.0.1:6379/0?db=1&password=***&token=***#***", shown
    with pytest.raises(ConfigError) as refused:  # coredis takes no ?token=: refused
        RateLimitOptions(default_rule="10/second", storage_uri=uri)
    assert "hunter22" not in str(refused.value) and "t0k3n" not in str(refused.value)
    with pytest.raises(ConfigError) as refused:  # coredis ignores ?password=: refused
        RateLimitOptions(default_rule="10/second", storage_uri=uri.replace("&token=t0k3n", ""))
    assert "hunter22" not in str(refused.value), str(refused.value)
    options = RateLimitOptions(default_rule="10/second", storage_uri=uri.replace(
        "&token=t0k3n", "").replace("&password=hunter22", ""))
    assert "fr4gment" not in repr(options), repr(options)
    assert "db=1" in repr(options)
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(storage_uri="bogus://127.0.0.1:1?password=hunter22")
    assert "hunter22" not in str(info.value), str(info.value)
    assert "'bogus://127.0.0.1:1?password=***'" in str(info.value)
    limiter = StorageLimiter(options)
    assert "hunter22" not in limiter._storage_name, limiter._storage_name
    said = _scrub_uri_secrets(f"cannot connect to {uri}: password hunter22 refused", uri)
    assert "hunter22" not in said and "t0k3n" not in said and "fr4gment" not in said, said


# --- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize(("options", "quoted"), [
    ({"storage_uri": "bogus://127.0.0.1:1"}, "'bogus://127.0.0.1:1'"),
    ({"storage_uri": "not a uri"}, "'not a uri'"),
    ({"default_rule": "10 per fortnight"}, "'10 per fortnight'"),
    ({"default_rule": "0/second"}, "'0/second'"),
    ({"rules": {"/a.B/C": "lots"}}, "'lots'"),
    ({"rules": {"OrderService": "1/second"}}, "'OrderService'"),
    ({"strategy": "leaky-bucket"}, "'leaky-bucket'"),
    ({"strategy": "moving-window", "storage_uri": "async+memcached://127.0.0.1:11211"},
     "'async+memcached://127.0.0.1:11211'"),
    ({"on_storage_error": "maybe"}, "'maybe'"),
    ({"key_prefix": ""}, "''"),
    ({"storage_timeout_s": 0}, "0"),
    ({"key": "x-user"}, "'x-user'"),
])
def test_bad_config_fails_at_construction_quoting_the_value(options: dict[str, Any],
                                                            quoted: str) -> None:
    """Each bad option raises ConfigError (a ValueError) when built, quoting the value."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(**options)
    assert quoted in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_storage_uri_error_redacts_password() -> None:
    """A rejected storage URI is quoted with its password redacted."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(storage_uri="bogus://:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(info.value)
    assert "'bogus://***@127.0.0.1:1'" in str(info.value)


def test_options_repr_redacts_the_storage_password() -> None:
    """``repr(RateLimitOptions)`` (and so ``repr(ServeOptions)``, which holds it, as a
    startup log or a debugger shows it) quotes ``storage_uri`` with its password redacted:
    it showed the URI as given, while every error message redacts it."""
    import meshkit

    secret = "S3cretPw-do-not-print"
    rl = RateLimitOptions(default_rule="10/second",
                          storage_uri=f"async+redis://:{secret}@127.0.0.1:6379")
    assert secret not in repr(rl), repr(rl)
    assert "storage_uri='async+redis://***@127.0.0.1:6379'" in repr(rl), repr(rl)
    assert "default_rule='10/second'" in repr(rl) and repr(rl).startswith("RateLimitOptions(")
    serve = meshkit.ServeOptions(insecure=True, rate_limit=rl)
    assert secret not in repr(serve)
    assert rl == RateLimitOptions(default_rule="10/second",
                                  storage_uri=f"async+redis://:{secret}@127.0.0.1:6379")


@pytest.mark.parametrize("uri", ["async+redis://:{pw}@127.0.0.1:99999",
                                 "redis://user:{pw}@127.0.0.1:port"])
def test_storage_the_limits_library_refuses_errors_without_the_password(uri: str) -> None:
    """A storage URI ``limits`` cannot parse (a port out of range or not a number) fails
    with a ConfigError that quotes it redacted and keeps the reason ``limits`` gives; that
    reason quoted the URI password and all (``Unable to parse storage uri
    redis://:<password>@...``), and so did the chained exception in a traceback."""
    import traceback

    secret = "S3cretPw-do-not-print"
    with pytest.raises(ConfigError) as info:
        StorageLimiter(RateLimitOptions(default_rule="10/second",
                                        storage_uri=uri.format(pw=secret)))
    text = "".join(traceback.format_exception(info.value))
    assert secret not in text, text
    assert "***@127.0.0.1:" in str(info.value), str(info.value)
    # refused by RateLimitOptions itself now, with the parser's reason
    assert "Port out of range" in str(info.value) or "Port could not be cast" in str(
        info.value), str(info.value)


def test_by_metadata_refuses_binary_or_empty_keys() -> None:
    """by_metadata rejects '-bin' and empty header names with ConfigError."""
    for bad in ("x-token-bin", "", "  "):
        with pytest.raises(ConfigError):
            by_metadata(bad)


class _CoroutineLimiter:
    """A :class:`~meshkit.resilience.ratelimit.Limiter` that only has ``check()`` (no
    ``synchronous`` path): the interceptor's coroutine path, over ``limiter``."""

    def __init__(self, limiter: StorageLimiter) -> None:
        self._limiter = limiter

    def applies_to(self, method: str) -> bool:
        return self._limiter.applies_to(method)

    async def check(self, method: str, key: str) -> Any:
        return self._limiter.check_now(method, key)


@pytest.mark.parametrize("path", ["synchronous", "coroutine"])
async def test_an_async_key_function_is_refused_not_silently_unlimited(path: str) -> None:
    """``RateLimitOptions(key=...)`` takes any function; a user whose key needs a lookup
    writes ``async def key(method, context)``. The options accepted it (only
    ``callable()`` was checked), and at run time its un-awaited coroutine object became
    the caller key: a new key on every call, so rule "1/hour" admitted every call of
    every caller, silently (only a "coroutine ... was never awaited" RuntimeWarning at
    garbage collection). Now such a key (an ``async def``, or an object whose
    ``__call__`` is one) is a ConfigError quoting it, and a key function that returns
    anything but a string (an awaitable from a plain function) fails the call
    ``UNKNOWN`` like a key function that raises, never admitting it unlimited."""

    async def key(method_name: str, context: Any) -> str:
        return "tenant-a"

    class AsyncKey:
        async def __call__(self, method_name: str, context: Any) -> str:
            return "tenant-a"

    for bad in (key, AsyncKey()):
        with pytest.raises(ConfigError, match="coroutine") as info:
            RateLimitOptions(default_rule="1/hour", key=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)

    def wrapped(method_name: str, context: Any) -> Any:  # a plain decorator's wrapper
        return key(method_name, context)

    options = RateLimitOptions(default_rule="1/hour", key=wrapped)
    interceptor = RateLimitInterceptor(options) if path == "synchronous" else \
        RateLimitInterceptor(options, limiter=_CoroutineLimiter(StorageLimiter(options)))
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            results = [await attempt(channel) for _ in range(3)]
    finally:
        await server.stop(None)
        await interceptor.aclose()
    for err in results:
        assert err is not None, "a call was admitted under '1/hour'"
        assert err.code() is grpc.StatusCode.UNKNOWN, err
        assert "wrapped" in (err.details() or ""), err.details()


@pytest.mark.parametrize("uri", ["memory://", "async+memory://"])
def test_memory_uri_accepted_with_or_without_async_prefix(uri: str) -> None:
    """'memory://' is an alias of limits' 'async+memory://'."""
    RateLimitInterceptor(RateLimitOptions(default_rule="1/second", storage_uri=uri))


@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_unlimited_methods_get_their_handler_untouched(kind: str) -> None:
    """A method with no rule (or a None rule) is not wrapped; a limited one is, once. A
    plain-function handler too, outside a MeshServer (on a grpc.aio server of your own,
    which runs it in its ``migration_thread_pool``; see the server tests below)."""
    interceptor = RateLimitInterceptor(RateLimitOptions(
        rules={"/s.A/Limited": "1/second", "/s.A/Exempt": None}))

    async def echo(req: bytes, ctx: Any) -> bytes:
        return req

    original: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        echo if kind == "async" else lambda req, ctx: req)

    class Details:
        def __init__(self, name: str) -> None:
            self.method = name
            self.invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()

    async def continuation(_: Any) -> Any:
        return original

    for name in ("/s.A/Exempt", "/s.A/Other"):
        assert await interceptor.intercept_service(continuation, Details(name)) is original
    first = await interceptor.intercept_service(continuation, Details("/s.A/Limited"))
    assert first is not original
    assert await interceptor.intercept_service(continuation, Details("/s.A/Limited")) is first


async def _own_server_with_an_unruled_method(
        pool: ThreadPoolExecutor, unary: Any) -> tuple[grpc.aio.Server, int,
                                                        RateLimitInterceptor]:
    """A grpc.aio server of the user's own with ``pool`` as its ``migration_thread_pool``
    and a RateLimitInterceptor with a rule for another method only, serving ``unary`` (a
    plain function) as ``/t.Sync/Unary``; started."""
    limiter = RateLimitInterceptor(RateLimitOptions(rules={"/t.Other/Limited": "10/second"}))
    server = grpc.aio.server(migration_thread_pool=pool, interceptors=(limiter,))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.Sync", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, limiter


async def test_a_method_without_a_rule_keeps_the_servers_migration_thread_pool() -> None:
    """On a grpc.aio server of your own (``grpc.aio.server(interceptors=[...])``), a plain
    handler of a method without a rule runs where grpc.aio runs it, in the server's
    ``migration_thread_pool``: "a method with no rule has its handler returned
    untouched". It was taken off the loop by meshkit with nothing to check, into the
    loop's default executor (``asyncio_0``), which the server's pool was there to keep
    blocked handlers out of."""
    seen: list[str] = []

    def unary(request: bytes, context: Any) -> bytes:
        seen.append(threading.current_thread().name)
        return request

    pool = ThreadPoolExecutor(4, thread_name_prefix="mine")
    server, port, limiter = await _own_server_with_an_unruled_method(pool, unary)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary_unary("/t.Sync/Unary")(b"x", timeout=5) == b"x"
    finally:
        await server.stop(None)
        await limiter.aclose()
        pool.shutdown(wait=False)
    assert seen and all(name.startswith("mine") for name in seen), (
        f"the unruled method's plain handler left the server's migration_thread_pool: {seen}")


@pytest.mark.timeout(40)
async def test_a_method_without_a_rule_gets_every_thread_of_the_servers_pool() -> None:
    """What leaving the server's pool cost: a grpc.aio server of your own whose
    ``migration_thread_pool`` is larger than the loop's default executor (``min(32,
    cpus + 4)`` threads) runs as many blocking handlers of an unruled method at once as
    its pool has threads; in the default executor, handlers that wait for each other
    (a barrier as wide as the pool, standing for handlers blocked on a slow backend)
    queued there and timed out."""
    width = min(32, (os.cpu_count() or 1) + 4) + 2
    barrier = threading.Barrier(width, timeout=4)

    def unary(request: bytes, context: Any) -> bytes:
        barrier.wait()
        return request

    pool = ThreadPoolExecutor(width, thread_name_prefix="mine")
    server, port, limiter = await _own_server_with_an_unruled_method(pool, unary)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            results = await asyncio.gather(*(
                ch.unary_unary("/t.Sync/Unary")(b"x", timeout=15) for _ in range(width)),
                return_exceptions=True)
    finally:
        await server.stop(None)
        await limiter.aclose()
        pool.shutdown(wait=False)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {width} calls failed: {failed[0]!r}"


# --- in-process server, in-memory counts --------------------------------------------------


async def test_calls_over_the_limit_get_resource_exhausted_with_retry_after() -> None:
    """N calls pass; call N+1 is RESOURCE_EXHAUSTED with retry-after and no caller key."""
    async with echo_server(RateLimitOptions(default_rule="3/minute")) as channel:
        for _ in range(3):
            assert await attempt(channel) is None
        err = await attempt(channel)
        # Default strategy, sliding window counter: the 3 hits keep weighing after their
        # window ends, until a third of the next one has passed: at most 60 + 20 s.
        assert assert_limited(err) <= 60 + 20
        assert err is not None
        assert "3 per 1 minute" in (err.details() or "")
        assert "127.0.0.1" not in (err.details() or "")


async def test_method_override_and_glob_beat_default_and_none_exempts() -> None:
    """An exact override, a glob and an exemption each take precedence over the default."""
    options = RateLimitOptions(
        default_rule="3/minute",
        rules={method("Unary"): "1/minute", "/meshkit.test.Echo/*Stream": "2/minute",
               method("Bidi"): None},
    )
    async with echo_server(options) as channel:
        assert await attempt(channel, "Unary") is None
        assert_limited(await attempt(channel, "Unary"), "Unary")
        for _ in range(3):  # default rule
            assert await attempt(channel, "Sleep") is None
        assert_limited(await attempt(channel, "Sleep"), "Sleep")
        for _ in range(2):  # glob; each method its own budget
            assert await attempt(channel, "ServerStream") is None
            assert await attempt(channel, "ClientStream") is None
        assert_limited(await attempt(channel, "ServerStream"), "ServerStream")
        for _ in range(5):  # exempt
            assert await attempt(channel, "Bidi") is None


@pytest.mark.parametrize("spelling", [method("Unary"), method("Unary")[1:], "Echo/Unary",
                                      "Echo/Un*", "*/Unary", "meshkit.*/*"])
async def test_every_pattern_spelling_limits_on_a_real_server(spelling: str) -> None:
    """Full, slash-less, short and glob keys all put /meshkit.test.Echo/Unary under the rule."""
    async with echo_server(RateLimitOptions(rules={spelling: "1/minute"})) as channel:
        assert await attempt(channel, "Unary") is None
        assert_limited(await attempt(channel, "Unary"), "Unary")
        if not spelling.endswith("/*"):
            for _ in range(3):  # not matched: unlimited
                assert await attempt(channel, "Sleep") is None


async def test_exact_and_longest_glob_decide_on_a_real_server() -> None:
    """Exact short key > longest glob (Echo/*Stream, 12) > shorter glob (*, listed last)."""
    options = RateLimitOptions(rules={
        "Echo/*Stream": "2/minute", "Echo/ClientStream": None, "*": "1/minute"})
    async with echo_server(options) as channel:
        for _ in range(2):
            assert await attempt(channel, "ServerStream") is None
        assert_limited(await attempt(channel, "ServerStream"), "ServerStream")
        for _ in range(3):  # exact exemption beats both globs
            assert await attempt(channel, "ClientStream") is None
        assert await attempt(channel, "Unary") is None  # only "*" matches
        assert_limited(await attempt(channel, "Unary"), "Unary")


async def test_callers_keyed_by_metadata_have_separate_budgets() -> None:
    """With key=by_metadata('x-user') each user, and header-less callers, has its own budget."""
    options = RateLimitOptions(default_rule="2/minute", key=by_metadata("x-user"))
    async with echo_server(options) as channel:
        for _ in range(2):
            assert await attempt(channel, user="alice") is None
        err = await attempt(channel, user="alice")
        assert_limited(err)
        assert err is not None and "alice" not in (err.details() or "")
        for _ in range(2):
            assert await attempt(channel, user="bob") is None
            assert await attempt(channel) is None  # falls back to the peer address
        assert_limited(await attempt(channel, user="bob"))
        assert_limited(await attempt(channel))


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_each_strategy_limits_in_memory(strategy: Strategy) -> None:
    """Every strategy admits the limit and rejects the next call, with retry-after."""
    options = RateLimitOptions(default_rule="4/minute", strategy=strategy)
    async with echo_server(options) as channel:
        for _ in range(4):
            assert await attempt(channel) is None
        # Fixed and moving windows free up within one window; the sliding window counter
        # within one window plus window/amount (its hits decay through the next window).
        bound = 60 + 15 if strategy == "sliding-window-counter" else 60
        assert 1 <= assert_limited(await attempt(channel)) <= bound


def test_memory_uri_gets_the_sweep_throttled_storage() -> None:
    """``memory://`` runs on SweepThrottledMemoryStorage, whose override must still name
    methods of limits' MemoryStorage: if a limits release renames its private sweep
    scheduler or sweep, the override would silently stop working (every hit would again
    start a thread and sweep every key) or the sweep would fail. This test fails first."""
    assert callable(getattr(MemoryStorage, _SCHEDULE_SWEEP, None))
    assert callable(getattr(MemoryStorage, _EXPIRE, None))
    memory = StorageLimiter(RateLimitOptions())
    assert isinstance(memory._storage, SweepThrottledMemoryStorage)
    assert memory.synchronous
    redis = StorageLimiter(RateLimitOptions(storage_uri="async+redis://127.0.0.1:1"))
    assert not isinstance(redis._storage, SweepThrottledMemoryStorage)
    assert not redis.synchronous


@pytest.mark.parametrize("value", [-1, float("nan"), "1", True])
def test_sweep_interval_must_be_a_non_negative_number(value: Any) -> None:
    with pytest.raises(ConfigError, match="sweep_interval_s"):
        SweepThrottledMemoryStorage("memory://", sweep_interval_s=value)


async def test_memory_sweep_runs_once_per_interval_and_counts_stay_exact() -> None:
    """Many callers' hits schedule one sweep per interval (limits alone schedules one per
    hit once the last has ended, each walking every key), and without sweeps each strategy
    still refuses the hit over the limit and admits again once the window has passed."""

    async def run(strategy: Strategy) -> None:
        storage = SweepThrottledMemoryStorage("memory://", sweep_interval_s=3600)
        limiter = _SYNC_STRATEGY_CLASSES[strategy](storage)
        item = parse_limit("2/second")
        for k in range(50):
            assert limiter.hit(item, "m", f"caller-{k}")
            await asyncio.sleep(0)  # a finished sweep would let limits start the next one
        assert storage.sweeps_scheduled == 1
        assert limiter.hit(item, "m", "x")
        assert limiter.hit(item, "m", "x")
        assert not limiter.hit(item, "m", "x"), strategy
        # admitted again once the window has passed, within 2.05 s (the sliding window
        # counter's previous hits weigh on the next window too); a refused hit counts in
        # no later window, so polling with hits changes nothing
        await until(lambda: limiter.hit(item, "m", "x"), timeout_s=2.05, interval_s=0.02,
                    what=f"{strategy} admitting again")
        assert storage.sweeps_scheduled == 1
        storage.close()

    await asyncio.gather(*(run(s) for s in STRATEGIES))


async def test_memory_sweep_still_gives_expired_keys_back_on_the_loop() -> None:
    """With the interval passed, the next hit schedules a sweep on the running event loop
    (no thread): expired keys are gone."""
    storage = SweepThrottledMemoryStorage("memory://", sweep_interval_s=0.0)
    limiter = _SYNC_STRATEGY_CLASSES["fixed-window"](storage)
    item = parse_limit("5/second")
    for k in range(20):
        assert limiter.hit(item, "m", f"caller-{k}")
    assert len(storage.expirations) == 20
    await asyncio.sleep(1.1)
    threads = {t.ident for t in threading.enumerate()}
    assert limiter.hit(item, "m", "late")
    assert storage._sweep_handle is not None  # scheduled, not yet run
    await until(lambda: len(storage.expirations) == 1, timeout_s=5)
    assert storage.sweeps_scheduled >= 2
    assert {t.ident for t in threading.enumerate()} <= threads


def test_memory_sweep_still_runs_after_a_loop_stopped_with_one_pending() -> None:
    """A sweep scheduled on a loop that stopped before running it does not keep later
    loops from sweeping (e.g. a server restarted under a new asyncio.run())."""
    storage = SweepThrottledMemoryStorage("memory://", sweep_interval_s=0.0)
    limiter = _SYNC_STRATEGY_CLASSES["fixed-window"](storage)
    item = parse_limit("5/second")
    old = asyncio.new_event_loop()

    def hit_then_stop() -> None:
        assert limiter.hit(item, "m", "early")  # schedules a sweep for the next turn
        old.stop()

    old.call_soon(hit_then_stop)
    old.run_forever()
    old.close()
    assert storage._sweep_handle is not None  # left pending on the closed loop

    async def later() -> None:
        await asyncio.sleep(1.1)
        assert limiter.hit(item, "m", "late")
        await until(lambda: list(storage.expirations) == ["LIMITER/m/late/5/1/second"],
                    timeout_s=5)

    asyncio.run(later())
    storage.close()


def test_memory_sweep_without_an_event_loop_uses_limits_timer() -> None:
    """Used outside an event loop, a due sweep runs on limits' own timer thread."""
    storage = SweepThrottledMemoryStorage("memory://", sweep_interval_s=0.0)
    limiter = _SYNC_STRATEGY_CLASSES["fixed-window"](storage)
    item = parse_limit("1/second")
    assert limiter.hit(item, "m", "a")
    assert list(storage.expirations) == ["LIMITER/m/a/1/1/second"]
    time.sleep(1.1)
    assert limiter.hit(item, "m", "b")
    deadline = time.monotonic() + 5
    while len(storage.expirations) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(storage.expirations) == ["LIMITER/m/b/1/1/second"]
    storage.close()


async def test_moving_window_forgets_callers_whose_window_ended() -> None:
    """With ``strategy="moving-window"`` on ``memory://`` a caller whose window ended costs
    nothing once the sweep ran (servers see callers come and go for weeks: pods get new
    IPs, users come and go). limits' ``MemoryStorage`` sweep empties a key's event list but
    never deletes the key, so every caller key ever seen stayed in ``events`` as ``[]``
    (about 200 bytes each, without bound); the fixed-window and sliding-window-counter
    strategies on the same storage do drop their expired keys, as Envoy's local rate limit
    or any token-bucket map with idle eviction forgets idle callers."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="5/second",
                                              strategy="moving-window"))
    storage = limiter._storage
    assert isinstance(storage, SweepThrottledMemoryStorage)
    serial = 0

    def hit_a_new_caller() -> None:
        nonlocal serial
        serial += 1
        assert limiter.check_now("/svc.v1.S/M", f"caller-{serial}") is None

    try:
        for _ in range(2):  # two rounds of 1,500 new callers, each window ended between
            for _ in range(1500):
                hit_a_new_caller()
            assert len(storage.events) >= 1500
            await asyncio.sleep(1.2)  # every window (1 s) ended
            # a hit after the sweep interval (1 s) schedules a sweep on this loop; what is
            # left are the few callers still within their window, not the 1,500
            await until(lambda: (hit_a_new_caller(), len(storage.events) <= 50)[1],
                        timeout_s=15, interval_s=0.1, what="ended windows swept")
        assert all(storage.events.values())  # no empty list stays behind
    finally:
        await limiter.aclose()


def test_moving_window_forgets_ended_callers_without_an_event_loop() -> None:
    """Used outside an event loop, the moving window's emptied keys are dropped too (on the
    calling thread, at a due sweep; limits' timer thread only empties them)."""
    storage = SweepThrottledMemoryStorage("memory://", sweep_interval_s=0.0)
    limiter = _SYNC_STRATEGY_CLASSES["moving-window"](storage)
    item = parse_limit("1/second")
    for k in range(100):
        assert limiter.hit(item, "m", f"caller-{k}")
    time.sleep(1.1)
    deadline = time.monotonic() + 10
    while len(storage.events) > 5 and time.monotonic() < deadline:
        limiter.hit(item, "m", "late")  # admitted or not, a hit schedules a due sweep
        time.sleep(0.05)
    assert len(storage.events) <= 5, f"{len(storage.events)} moving-window keys kept"
    storage.close()


async def test_aclose_cancels_a_scheduled_sweep() -> None:
    limiter = StorageLimiter(RateLimitOptions(default_rule="5/second"))
    storage = limiter._storage
    assert limiter.check_now("/s.A/M", "k") is None
    assert storage._sweep_handle is not None
    await limiter.aclose()
    assert storage._sweep_handle is None


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_memory_limiter_counts_without_a_coroutine(strategy: Strategy) -> None:
    """With memory://, check_now counts as check does, and the interceptor's check is a
    plain function: None to admit, the refusal's awaitable over the limit."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="2/minute", strategy=strategy))
    assert limiter.check_now("/s.A/M", "k") is None
    assert await limiter.check("/s.A/M", "k") is None
    rejection = limiter.check_now("/s.A/M", "k")
    assert rejection is not None and rejection.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # within one window; the sliding window counter's hits weigh on the next one until
    # window/amount of it has passed
    bound = 60 + 30 if strategy == "sliding-window-counter" else 60
    assert rejection.retry_after_s is not None and 1 <= rejection.retry_after_s <= bound
    again = await limiter.check("/s.A/M", "k")
    # the same refusal; its pushback is the wait to the millisecond, which went on
    # between the two checks (5595ac7), so it may be a little shorter
    assert again is not None and rejection.pushback_ms is not None \
        and again.pushback_ms is not None
    assert dataclasses.replace(again, pushback_ms=None) == \
        dataclasses.replace(rejection, pushback_ms=None)
    assert 0 <= rejection.pushback_ms - again.pushback_ms <= 1000, (rejection, again)
    assert limiter.check_now("/s.A/M", "other") is None  # its own budget

    interceptor = RateLimitInterceptor(RateLimitOptions(default_rule="1/minute",
                                                        strategy=strategy))
    before = interceptor._before_for("/s.A/M")
    assert before is not None and not inspect.iscoroutinefunction(before)

    class Context:
        aborted: tuple[Any, ...] | None = None

        def peer(self) -> str:
            return "ipv4:127.0.0.1:5000"

        async def abort(self, *args: Any) -> None:
            self.aborted = args

    ctx = Context()
    assert before(ctx) is None
    refusal = before(ctx)
    assert inspect.isawaitable(refusal)
    await refusal
    assert ctx.aborted is not None and ctx.aborted[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ctx.aborted[2][0][0] == "retry-after"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_rate_limit_windows_survive_a_wall_clock_step_back(
        monkeypatch: pytest.MonkeyPatch, strategy: Strategy) -> None:
    """A server limits a method to ``2/minute`` per caller with the in-process storage
    (``memory://``). A caller spends its two calls and is refused (``retry-after: 60``);
    then the machine's wall clock is stepped back an hour (NTP ``makestep``, a VM
    snapshot restored). Before: with the fixed or moving window, a minute and more later
    the caller was still refused, with ``retry-after: 3599`` (then ``3479``): locked out
    for an hour, because limits' MemoryStorage (and ``_rejection`` for ``retry-after``)
    timed the windows on ``time.time()``. Now the memory storage times them on the
    monotonic clock: a minute of real time later the caller is admitted again, whatever
    the wall clock did (the sliding window counter too)."""
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    limiter = StorageLimiter(RateLimitOptions(default_rule="2/minute", strategy=strategy))
    method = "/ecom.v1.OrderService/PlaceOrder"
    assert limiter.check_now(method, "caller") is None
    assert limiter.check_now(method, "caller") is None
    refused = limiter.check_now(method, "caller")
    assert refused is not None and refused.retry_after_s is not None
    assert refused.retry_after_s <= (90 if strategy == "sliding-window-counter" else 60)
    offset[0] = -3600.0  # stepped back an hour: no window moves
    again = limiter.check_now(method, "caller")
    assert again is not None and again.retry_after_s is not None
    assert again.retry_after_s <= refused.retry_after_s
    offset[0] = -3600.0 + 91.0  # then a minute and a half of real time passes
    monkeypatch.setattr(time, "monotonic", lambda m=time.monotonic: m() + 91.0)
    assert limiter.check_now(method, "caller") is None


def test_every_clock_read_of_the_memory_storage_is_on_the_monotonic_clock() -> None:
    """The installed limits' memory storage, as meshkit runs it: each of its methods and
    the moving window's Entry run on meshkit's clock; none is left reading the wall
    clock (the windows would then compare two clocks)."""
    import types

    import limits.storage.memory as limits_memory

    from meshkit.resilience.ratelimit import (
        _MEMORY_CLOCK,
        _MEMORY_CLOCK_ERROR,
        _clock_reads,
        _unwrapped,
    )

    assert _MEMORY_CLOCK_ERROR is None
    cls = SweepThrottledMemoryStorage
    rebound = 0
    for name in dir(cls):
        member = inspect.getattr_static(cls, name)
        func = _unwrapped(member)
        if (not isinstance(func, types.FunctionType)
                or func.__module__ != limits_memory.__name__
                or not _clock_reads(func.__code__)):
            continue  # not limits' code reading the clock (meshkit's own: time.monotonic)
        assert func is member, name  # no error-wrapper left around it
        assert func.__globals__["time"] is _MEMORY_CLOCK, name
        rebound += 1
    assert rebound >= 8  # incr, get, get_expiry, acquire_entry, the sweep...
    entry = cls.acquire_entry.__globals__["Entry"]
    assert issubclass(entry, limits_memory.Entry) and entry is not limits_memory.Entry
    assert entry.__init__.__globals__["time"] is _MEMORY_CLOCK


@pytest.mark.parametrize(("body", "shown"), [
    ("return time.monotonic()", "time.monotonic"),
    ("return time.time_ns() / 1e9", "time.time_ns"),
    ("clock = time\n        return clock.time()", "['time']"),
])
def test_a_memory_storage_reading_another_clock_is_refused_loudly(
        monkeypatch: pytest.MonkeyPatch, body: str, shown: str) -> None:
    """A limits release whose memory storage reads the clock otherwise than with
    ``time.time()`` cannot be put on the monotonic clock by rebinding its module's
    ``time``: _rebound_to_clock raises, naming the method and how it reads the clock, and
    the storage then keeps limits' own wall-clock windows (never two clocks mixed) and the
    first one built says why in a warning: a newer limits never stops a service."""
    import types

    from meshkit.resilience import ratelimit
    from meshkit.resilience.ratelimit import _rebound_to_clock

    fake = types.ModuleType("fake_limits_memory")
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    exec(f"import time\nclass MemoryStorage:\n    def get_expiry(self, key):\n"
         f"        {body}\n", vars(fake))
    with pytest.raises(TypeError, match=r"MemoryStorage\.get_expiry") as info:
        _rebound_to_clock(fake.MemoryStorage, types.SimpleNamespace(time=time.monotonic))
    assert shown in str(info.value)

    monkeypatch.setattr(ratelimit, "_MEMORY_CLOCK_ERROR", f"TypeError: {info.value}")
    monkeypatch.setattr(ratelimit, "_MEMORY_CLOCK_WARNED", False)
    with capture_logs() as logs:
        StorageLimiter(RateLimitOptions(default_rule="1/second"))
        StorageLimiter(RateLimitOptions(default_rule="1/second"))
    warned = [e for e in logs if "wall clock" in e["event"]]
    assert len(warned) == 1 and shown in warned[0]["reason"], logs


def test_memory_storage_windows_read_the_clock_the_storage_was_given() -> None:
    """_rebound_to_clock on limits' own MemoryStorage: a fixed window expires, and a
    moving window's hits leave it, on the clock given, not on the wall clock."""
    import types

    from meshkit.resilience.ratelimit import _rebound_to_clock

    now = [100.0]
    methods = _rebound_to_clock(MemoryStorage, types.SimpleNamespace(time=lambda: now[0]))
    storage = type("Clocked", (MemoryStorage,), methods)()
    try:
        assert storage.incr("k", 10) == 1
        assert storage.get_expiry("k") == 110.0
        assert storage.acquire_entry("m", 1, 10)
        assert not storage.acquire_entry("m", 1, 10)
        assert storage.get_moving_window("m", 1, 10) == (100.0, 1)
        now[0] = 110.5
        assert storage.get("k") == 0
        assert storage.acquire_entry("m", 1, 10)
    finally:
        storage.timer.cancel()


def test_check_now_refuses_a_networked_storage() -> None:
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/second",
                                              storage_uri="async+redis://127.0.0.1:1"))
    with pytest.raises(RuntimeError, match="check\\(\\)"):
        limiter.check_now("/s.A/M", "k")


@pytest.mark.parametrize(("on_error", "code"), [("allow", None),
                                                ("deny", grpc.StatusCode.UNAVAILABLE)])
async def test_memory_storage_failure_fails_as_configured(
        on_error: OnStorageError, code: grpc.StatusCode | None) -> None:
    """A failing in-process storage step never crashes the check: it fails open or closed
    as configured, and the breaker counts it."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="5/second",
                                              on_storage_error=on_error))

    def broken(*_: Any) -> bool:
        raise KeyError("boom")

    real = limiter._acquire_window
    limiter._acquire_window = broken
    with capture_logs() as logs:
        got = limiter.check_now("/s.A/M", "k")
        assert (got.code if got is not None else None) is code
        for _ in range(4):  # 3 failures open the breaker: then the storage is skipped
            got = limiter.check_now("/s.A/M", "k")
            assert (got.code if got is not None else None) is code
    assert [e["event"] for e in logs] == ["rate limit storage unavailable"]
    assert limiter.breaker.is_open and limiter.breaker.opened == 1
    # a new method's checker on the working storage, once the breaker lets a probe through
    limiter._acquire_window = real
    limiter.breaker._until = 0.0
    with capture_logs() as logs:
        assert limiter.check_now("/s.A/Other", "k") is None
    assert not limiter.breaker.is_open and not limiter.breaker.dirty
    assert [e["event"] for e in logs] == ["rate limit storage recovered"]


@pytest.mark.parametrize("name", ["ServerStream", "ClientStream", "Bidi"])
async def test_streaming_calls_are_limited(name: str) -> None:
    """Each streaming kind counts once per call and is rejected over the limit."""
    async with echo_server(RateLimitOptions(default_rule="2/minute")) as channel:
        for _ in range(2):
            assert await attempt(channel, name) is None
        # The rejected call sends no messages: a grpc.aio *client* still writing when the
        # server's status arrives may report INTERNAL instead of it (grpc/grpc#36066).
        assert_limited(await attempt(channel, name, messages=0), name)


async def test_writer_style_and_plain_function_handlers_are_limited() -> None:
    """A stream handler using context.write and a plain (non-async) unary handler work and
    are limited like async ones."""

    async def writer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        await context.write(b"a")
        await context.write(request)

    def plain(request: bytes, context: Any) -> bytes:
        return request.upper()

    generic = grpc.method_handlers_generic_handler("t.Styles", {
        "Write": grpc.unary_stream_rpc_method_handler(writer),
        "Plain": grpc.unary_unary_rpc_method_handler(plain),
    })
    interceptor = RateLimitInterceptor(RateLimitOptions(default_rule="2/minute"))
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            write: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                "/t.Styles/Write")
            plain_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/t.Styles/Plain")
            for _ in range(2):
                assert [m async for m in write(b"b", timeout=5)] == [b"a", b"b"]
                assert await plain_call(b"x", timeout=5) == b"X"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [m async for m in write(b"b", timeout=5)]
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plain_call(b"x", timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(None)
        await interceptor.aclose()


async def test_every_part_of_a_multi_limit_rule_applies() -> None:
    """In '5 per minute;2 per hour' the hourly part rejects the third call, and its
    retry-after is when the hour's window ends (over a minute, but in an hour's last
    minute: the default fixed window ends with the clock's hour; a run there read 60)."""
    async with echo_server(RateLimitOptions(default_rule="5 per minute;2 per hour")) as channel:
        for _ in range(2):
            assert await attempt(channel) is None
        err = await attempt(channel)
        hour_left_s = 3600 - time.time() % 3600
        retry_after = assert_limited(err)
        assert retry_after > 60 or hour_left_s <= 62, (retry_after, hour_left_s)
        assert err is not None and "2 per 1 hour" in (err.details() or "")


# --- Redis --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_two_replicas_share_one_limit_in_redis(shared_redis: str,
                                                     strategy: Strategy) -> None:
    """Two servers on the same Redis and key_prefix enforce one global limit together.
    Per hour, not per minute: a fixed window's count starts again at each window's edge,
    and a run crossing a minute's edge (1 s of 60, more under load) admitted a fifth."""
    # storage_timeout_s: a round trip of a loaded box over the 0.25 s default failed open
    # and admitted a fifth call; the timeout is not what this test is about
    options = RateLimitOptions(default_rule="4/hour", strategy=strategy,
                               storage_uri=shared_redis, key_prefix=unique_prefix(),
                               storage_timeout_s=5.0)
    async with echo_server(options, "a") as a, echo_server(options, "b") as b:
        for channel in (a, b, a, b):
            assert await attempt(channel) is None
        assert_limited(await attempt(a))
        assert_limited(await attempt(b))


@pytest.mark.parametrize("fault", ["reset", "slow"])
async def test_a_lost_fixed_window_count_never_locks_the_caller_out(
        shared_redis: str, fault: str) -> None:
    """Fixed window on Redis: limits' coredis bridge counted with ``INCRBY`` and then, in a
    second round trip and only when the count was 1, ``EXPIRE``. When the connection was
    reset after the ``INCRBY`` ran (``reset``), or ``storage_timeout_s`` cancelled the
    call while Redis held the ``INCRBY`` (``slow``: run late), the ``EXPIRE`` was never
    sent and no later hit sent it: the counter stayed with no TTL and the caller, a
    "2/second" one, was refused ``RESOURCE_EXHAUSTED`` (``retry-after: 1``) on every
    call, for good. Now the count and its expiry are one atomic script (limits'
    ``incr_expire.lua``): the failed call fails open, and the caller is admitted again
    once its window has ended."""
    prefix = unique_prefix()
    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="2/second", strategy="fixed-window",
            storage_uri=f"async+redis://{proxy.address}", key_prefix=prefix,
            storage_timeout_s=0.3, breaker_failures=100))
        m = "/svc.v1.Svc/Call"
        try:
            assert await limiter.check(m, "bob") is None  # connected, scripts loaded
            if fault == "reset":
                proxy.reset_after(b"/alice/")  # alice's count runs, its answer is lost
                assert await limiter.check(m, "alice") is None  # fails open
                assert proxy.lost_answers == 1
            else:
                proxy.blackhole()
                assert await limiter.check(m, "alice") is None  # timed out: fails open
                await proxy.start()  # the held count now runs in Redis
            for _ in range(4):  # use up alice's window
                if await limiter.check(m, "alice") is not None:
                    break
            ttls = redis_keys(f"*{prefix}*alice*")
            assert ttls and all(ttl > 0 for ttl in ttls.values()), ttls
            # admitted once her 1-second window is over, 1.5 s at the latest (a refused hit
            # only counts in the window it falls in); with the count left without a TTL,
            # never
            async def admitted() -> bool:
                return await limiter.check(m, "alice") is None

            try:
                await until(admitted, timeout_s=1.5, interval_s=0.05,
                            what="alice admitted after her window")
            except AssertionError as exc:
                raise AssertionError(redis_keys(f"*{prefix}*alice*")) from exc
        finally:
            await limiter.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_hit_whose_answer_was_lost_counts_once(shared_redis: str,
                                                       strategy: Strategy) -> None:
    """The Redis storage was built with coredis' ``Redis.from_url`` defaults, which retry
    a command twice on a connection error or timeout. A hit is not idempotent: when the
    connection was reset after Redis ran it (the answer lost), coredis ran it again on a
    new connection, so one call counted two or three times: a "3/minute" caller got 2 of
    5 calls admitted (a "1/minute" caller had its only call refused). Now the client
    retries nothing (``NoRetryPolicy``): the call whose answer was lost is a storage
    failure (fails open here) counted once, and the caller gets exactly 3."""
    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="3/minute", strategy=strategy,
            storage_uri=f"async+redis://{proxy.address}", key_prefix=unique_prefix(),
            storage_timeout_s=1.0, breaker_failures=100))
        m = "/svc.v1.Svc/Call"
        try:
            assert await limiter.check(m, "bob") is None  # connected, scripts loaded
            proxy.reset_after(b"/alice/")  # alice's hit runs in Redis, its answer is lost
            results = [await limiter.check(m, "alice") for _ in range(5)]
            assert proxy.lost_answers == 1
            assert all(r is None or r.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                       for r in results), results
            admitted = sum(r is None for r in results)
            assert admitted == 3, f"{admitted} of 5 calls admitted under 3/minute"
        finally:
            await limiter.aclose()


LogEntries = list[MutableMapping[str, Any]]


def warnings_logged(logs: LogEntries) -> LogEntries:
    """The 'storage unavailable' warnings among captured log entries."""
    return [e for e in logs
            if e["log_level"] == "warning" and e["event"] == "rate limit storage unavailable"]


def recoveries_logged(logs: LogEntries) -> LogEntries:
    """The 'storage recovered' info entries among captured log entries."""
    return [e for e in logs
            if e["log_level"] == "info" and e["event"] == "rate limit storage recovered"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_caller_over_the_limit_is_admitted_when_each_redis_round_trip_is_within_the_timeout(
        shared_redis: str, strategy: Strategy) -> None:
    """A Redis whose every round trip takes 0.35 s, well within ``storage_timeout_s=0.6``
    (RateLimitOptions: "seconds a storage round trip may take before it counts as a
    storage failure"). Rule "1/hour": the caller's first call was admitted in one round
    trip, but its second call, over the limit, was *admitted too*, and every later one:
    the limiter counted the hit (one round trip: "refused"), then read the window's stats
    for ``retry-after`` (one more round trip for the moving and sliding windows, two for
    the fixed window: GET and TTL), all under one ``asyncio.timeout(storage_timeout_s)``.
    The sum passed the timeout, the refusal was thrown away as a "storage failure" ("rate
    limit storage unavailable" logged) and the call failed open (``UNAVAILABLE`` with
    ``on_storage_error="deny"``); three such callers in a row opened the breaker, turning
    limits off for every caller. Now each round trip has the timeout to itself: the
    over-limit call is refused ``RESOURCE_EXHAUSTED``, as with a fast Redis."""
    async with LatencyProxy(SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="1/hour", strategy=strategy,
            storage_uri=f"async+redis://127.0.0.1:{proxy.port}",
            key_prefix=unique_prefix(), storage_timeout_s=0.6, breaker_failures=100))
        m = "/svc.v1.Svc/Call"
        try:
            # connect and load every script the strategy uses, at full speed
            assert await limiter.check(m, "warm-up") is None
            warm = await limiter.check(m, "warm-up")
            assert warm is not None and warm.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            proxy.delay_s = 0.35
            t0 = time.monotonic()
            assert await limiter.check(m, "alice") is None  # her one call this hour
            assert time.monotonic() - t0 < 0.6, "one round trip should fit the timeout"
            with capture_logs() as logs:
                second = await limiter.check(m, "alice")
            assert second is not None, (
                "alice's second call under '1/hour' was admitted: the refusal's extra round "
                "trips ran past storage_timeout_s and the limiter failed open")
            assert second.code is grpc.StatusCode.RESOURCE_EXHAUSTED, second
            assert second.retry_after_s is not None and 3500 <= second.retry_after_s <= 3600
            assert not warnings_logged(logs) and not limiter.breaker.dirty
        finally:
            await limiter.aclose()


_WINDOW_READS = {"fixed-window": "get_expiry", "moving-window": "get_moving_window",
                 "sliding-window-counter": "get_sliding_window"}


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_refusal_whose_window_read_fails_is_still_refused(
        shared_redis: str, strategy: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the hit said "refused", the call is refused whatever happens to the read of
    the window's state behind ``retry-after``: when that read fails (or takes longer
    than ``storage_timeout_s``), ``retry-after`` is the window's length, and it is not a
    storage failure (no warning, the breaker untouched)."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/hour", strategy=strategy, storage_uri=shared_redis,
        key_prefix=unique_prefix(), on_storage_error="deny", breaker_failures=1,
        storage_timeout_s=5.0))  # a loaded box's slow round trip is not the fault here
    m = "/svc.v1.Svc/Call"
    try:
        assert await limiter.check(m, "alice") is None

        async def fails(*args: Any) -> Any:
            raise ConnectionError("lost the read")

        monkeypatch.setattr(limiter._storage, _WINDOW_READS[strategy], fails)
        with capture_logs() as logs:
            for _ in range(3):
                refused = await limiter.check(m, "alice")
                assert refused is not None, "admitted over the limit"
                assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED, refused
                assert refused.retry_after_s == 3600, refused
        assert not warnings_logged(logs) and not limiter.breaker.dirty
    finally:
        await limiter.aclose()


async def test_fixed_window_retry_after_on_redis_is_never_shorter_than_the_real_wait(
        shared_redis: str) -> None:
    """Fixed window on Redis, rule "1 per 3 seconds" (found with "1 per 4 seconds"). The
    caller's one call starts the window; 0.75 s later its second call was refused with
    ``retry-after: 2``, though the window still had 2.25 s to run (with 4 s: ``3``, 3.25 s
    left): a client that waited the time it was told (as meshkit's own retry policy does)
    was refused again. ``retry-after`` came from limits' ``get_expiry``, which reads Redis
    ``TTL``: whole seconds rounded to the *nearest* second (2.25 -> 2), so
    ``ceil(reset_time - now)`` rounded nothing up (memory:// and the other two strategies
    on Redis sent 3). Now the expiry is read with ``PTTL`` (milliseconds): ``retry-after``
    is at least the time the window really has left, and a call made once it has passed
    is admitted. (3 s, not less: the second call must still fall in the window on a loaded
    machine, over 2 s after the first.)"""
    options = RateLimitOptions(default_rule="1 per 3 second", strategy="fixed-window",
                               storage_uri=shared_redis, key=by_metadata("x-user"),
                               key_prefix=unique_prefix(),
                               storage_timeout_s=5.0)  # a slow round trip fails open
    async with echo_server(options) as channel:
        assert await attempt(channel, user="warm-up") is None  # connected, script loaded
        sent = time.time()  # alice's window starts after this, so it ends after sent + 3
        assert await attempt(channel, user="alice") is None
        await asyncio.sleep(0.75)
        err = await attempt(channel, user="alice")
        refused_at = time.time()
        told = assert_limited(err)
        left = sent + 3.0 - refused_at  # the window had at least this long left
        assert told >= left, f"retry-after: {told}, but the window had {left:.2f} s left"
        assert told <= 3, told
        await asyncio.sleep(max(0.0, told - (time.time() - refused_at)) + 0.1)
        again = await attempt(channel, user="alice")
        assert again is None, (
            f"refused again {told} s after 'retry-after: {told}' "
            f"(retry-after {assert_limited(again)} this time)")


async def test_redis_outage_fails_open_logs_once_and_recovers(
        private_redis: PrivateRedis) -> None:
    """With fail-open, calls pass while Redis is down (one warning), then limits resume.
    (The breaker opened by the outage probes after 0.3 s, not the default 1 s: the
    recovery is the same, sooner.)"""
    options = RateLimitOptions(default_rule="3/minute", storage_uri=private_redis.uri,
                               key_prefix=unique_prefix(), breaker_open_s=0.3)
    async with echo_server(options) as channel:
        with capture_logs() as logs:
            for _ in range(2):
                assert await attempt(channel) is None
            private_redis.kill()
            for _ in range(5):  # more than the limit: proves the calls were let through
                assert await attempt(channel) is None
            assert len(warnings_logged(logs)) == 1
            assert warnings_logged(logs)[0]["on_storage_error"] == "allow"

            private_redis.start()
            await until(private_redis.ready, timeout_s=10, what="redis-server restarted")

            async def recovered() -> bool:
                assert await attempt(channel) is None
                return bool(recoveries_logged(logs))

            await until(recovered, timeout_s=10, what="limiter recovery")
            errors = [await attempt(channel) for _ in range(4)]
            assert_limited(next(e for e in errors if e is not None))
            assert len(warnings_logged(logs)) == 1
            assert len(recoveries_logged(logs)) == 1


async def test_redis_outage_fails_closed_with_unavailable_and_recovers(
        private_redis: PrivateRedis) -> None:
    """With on_storage_error='deny', calls get UNAVAILABLE while Redis is down, then pass.
    (The breaker opened by the outage probes after 0.3 s, not the default 1 s.)"""
    options = RateLimitOptions(default_rule="100/minute", storage_uri=private_redis.uri,
                               key_prefix=unique_prefix(), on_storage_error="deny",
                               breaker_open_s=0.3)
    async with echo_server(options) as channel:
        with capture_logs() as logs:
            assert await attempt(channel) is None
            private_redis.kill()
            for _ in range(3):
                err = await attempt(channel)
                assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
                assert "rate limiter unavailable" in (err.details() or "")
                assert not [k for k, _ in err.trailing_metadata() or () if k == "retry-after"]
            assert len(warnings_logged(logs)) == 1

            private_redis.start()
            await until(private_redis.ready, timeout_s=10, what="redis-server restarted")

            async def passes() -> bool:
                return await attempt(channel) is None

            await until(passes, timeout_s=10, what="calls admitted again")
            assert len(recoveries_logged(logs)) == 1



def test_sliding_window_wait_counts_hits_that_outlive_their_window() -> None:
    """Hits in the current window still weigh fully until it rolls over: for 2/hour with
    both hits 10 s ago, the next hit is admitted just after the rollover (their weighted
    count 2 * (1 - s/window) is then below 2; limits admits while floor(weighted) + 1 <=
    amount), not while the hits are still in their window."""
    from meshkit.resilience._ratelimit_policy import sliding_window_wait_s

    w = 3600.0
    wait = sliding_window_wait_s(amount=2, window_s=w, previous_count=0,
                                 previous_expires_in_s=0, current_count=2,
                                 current_expires_in_s=w + 9.0)  # key TTL: 2 windows
    assert wait == 9.0
    # Three hits in the current window of 2/hour: admitted once 3 * (1 - s/w) < 2.
    assert sliding_window_wait_s(amount=2, window_s=w, previous_count=0,
                                 previous_expires_in_s=0, current_count=3,
                                 current_expires_in_s=w + 9.0) == pytest.approx(9.0 + w / 3)
    # Hits only in the previous window: admitted as soon as its share decays below 2.
    assert sliding_window_wait_s(amount=2, window_s=w, previous_count=2,
                                 previous_expires_in_s=w / 2, current_count=0,
                                 current_expires_in_s=1.5 * w) == 0.0
    assert sliding_window_wait_s(amount=2, window_s=w, previous_count=6,
                                 previous_expires_in_s=w / 2, current_count=0,
                                 current_expires_in_s=1.5 * w) == w / 6
    assert sliding_window_wait_s(amount=5, window_s=w, previous_count=0,
                                 previous_expires_in_s=0, current_count=1,
                                 current_expires_in_s=w + 5.0) == 0.0


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_sliding_window_retry_after_matches_when_limits_admits_again(
        storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """retry-after is not longer than the real wait: for 2/minute with both hits 9.5 s
    before the window rolls over, limits admits the next hit just after the rollover, so
    the rejection says 10 s (40 s before: the unfloored weighted count was compared).
    (Not exactly 10 s before: limits' window arithmetic is a float, the wait 10 s + 7e-11,
    which rounds up to 11.)"""
    from meshkit.resilience.ratelimit import _MEMORY_CLOCK, StorageLimiter

    if storage == "memory":
        base = 60.0 * 16_667  # the start of a one-minute window
        now = [base + 50.5]
        # the memory storage's clock (monotonic; limits' own module reads time.time())
        monkeypatch.setattr(_MEMORY_CLOCK, "time", lambda: now[0])
        limiter = StorageLimiter(RateLimitOptions(default_rule="2/minute"))
    else:
        if not redis_ping(6379):
            skip_or_fail("no Redis on 127.0.0.1:6379")
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="2/minute", storage_uri="async+redis://127.0.0.1:6379",
            key_prefix=f"sw-{uuid.uuid4().hex}"))
    m = "/svc.v1.Svc/Call"
    try:
        assert await limiter.check(m, "caller") is None
        assert await limiter.check(m, "caller") is None
        rejection = await limiter.check(m, "caller")
        assert rejection is not None and rejection.retry_after_s is not None
        if storage == "memory":
            assert rejection.retry_after_s == 10, rejection
            now[0] = base + 61.0  # 11 s later, just after the rollover
            assert await limiter.check(m, "caller") is None
        else:  # Redis' window starts at the first hit: it rolls over a minute later
            assert rejection.retry_after_s == 60, rejection
    finally:
        await limiter.aclose()


# --- a hung storage: the breaker (issue 12 item 9) ---------------------------------------


def test_storage_breaker_opens_after_consecutive_failures_and_probes() -> None:
    """Closed until `failures` in a row; open (no storage) for open_s; then exactly one
    probe; a failed probe doubles the open time up to max_open_s; a good one closes."""
    now = [0.0]
    b = StorageBreaker(failures=3, open_s=1.0, max_open_s=3.0, clock=lambda: now[0])
    assert not b.dirty
    for _ in range(2):
        assert b.allow()
        b.failure()
        assert b.dirty
    b.success()  # a success resets the streak
    assert not b.dirty
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert not b.is_open
    b.failure()
    assert b.is_open and b.opened == 1
    assert not b.allow()
    now[0] = 1.0
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    b.failure()  # probe failed: open for 2 s
    now[0] = 2.9
    assert not b.allow()
    now[0] = 3.0
    assert b.allow()
    b.failure()  # open for min(4, 3) = 3 s
    now[0] = 5.9
    assert not b.allow()
    now[0] = 6.0
    assert b.allow()
    b.success()
    assert not b.is_open and b.allow() and not b.dirty


def test_an_abandoned_probe_lets_the_next_caller_probe() -> None:
    """A probe that never finished (cancelled) frees its slot without closing the breaker
    or lengthening its open time; abandoning a call while closed changes nothing."""
    now = [0.0]
    b = StorageBreaker(failures=1, open_s=1.0, max_open_s=4.0, clock=lambda: now[0])
    assert b.allow()
    b.abandoned()
    assert not b.is_open and not b.dirty
    b.failure()
    now[0] = 1.0
    assert b.allow()  # the probe
    assert not b.allow()
    b.abandoned()
    assert b.is_open
    assert b.allow()  # the next caller probes
    b.failure()  # open for 2 s: the abandoned probe did not double the wait
    now[0] = 2.9
    assert not b.allow()
    now[0] = 3.0
    assert b.allow()


async def test_a_cancelled_breaker_probe_does_not_stop_rate_limiting_for_good() -> None:
    """Redis hangs and the breaker opens; the probe's call is cancelled (its caller's
    deadline) while it waits on Redis. Once Redis answers again, the next caller probes
    and limits resume, instead of every call skipping the storage for good (UNAVAILABLE
    with on_storage_error="deny").

    Waits on conditions, not on sleeps racing the 0.3 s storage timeout: the probe is
    cancelled as soon as it is out, and Redis comes back only once the cancelled probe's
    hit has ended on its own. (Probing 0.3 s after the first timeout, the probe went
    down the connection that timeout left, dropped as silent about 0.3 s after it:
    "connection lost" at once, before the cancel 0.1 s later, in 8 of 20 runs.)"""
    if not redis_ping(6379):
        skip_or_fail("no Redis on 127.0.0.1:6379")
    async with TcpProxy("127.0.0.1", 6379) as proxy:
        limiter = _breaker_limiter(proxy, breaker_failures=1, breaker_open_s=0.8,
                                   breaker_max_open_s=0.8)
        m = "/svc.v1.Svc/Call"

        async def admitted() -> bool:
            return await limiter.check(m, "caller") is None

        try:
            # connected, counting (a first connect slower than the storage timeout on a
            # loaded host opens the breaker: the next probe due connects)
            await until(admitted, timeout_s=10, what="the first hit admitted")
            proxy.blackhole()
            rejection = await limiter.check(m, "caller")  # storage timeout: opens
            assert rejection is not None and rejection.code is grpc.StatusCode.UNAVAILABLE
            assert limiter.breaker.is_open
            # due for a probe (open 0.8 s); by then the connection the timeout left is
            # dropped as silent (0.3 s after it, a timer due before this sleep's end): the
            # probe connects anew and waits on the hung Redis
            await asyncio.sleep(0.9)
            probe = asyncio.ensure_future(limiter.check(m, "caller"))
            await until(lambda: limiter.breaker._probing or probe.done(), timeout_s=5,
                        what="the probe out")
            assert not probe.done(), probe.result()
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            # its hit ends on its own (a timeout, or the silent connection dropped)
            await until(lambda: not limiter._finishing, timeout_s=5,
                        what="the cancelled probe's hit ended")
            assert limiter.breaker.is_open  # no success: still open
            await proxy.start()  # Redis answers again

            await until(admitted, timeout_s=5, what="a new probe closes the breaker")
            assert not limiter.breaker.is_open
        finally:
            await limiter.aclose()


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_hung_redis_opens_the_breaker_then_limits_resume(
        shared_redis: str, on_error: OnStorageError) -> None:
    """Redis behind a proxy that accepts and never answers: after a few storage timeouts
    calls stop waiting for it (fail open, or UNAVAILABLE when failing closed, at once);
    once it answers again a probe closes the breaker and the limit is enforced.

    The first call waits the storage timeout; the next two go to the storage too (each a
    storage failure) but need not wait it all: the connection the first timeout left is
    dropped as silent about one timeout later, failing what waits on it at once
    ("connection lost"; a third call 0.004-0.07 s in 3 of 40 runs under load, 8 of 15
    alone, which a "the first three each wait >= 0.2 s" check failed)."""
    port = int(shared_redis.rsplit(":", 1)[1])
    async with TcpProxy("127.0.0.1", port) as proxy:
        options = RateLimitOptions(default_rule="5/second",
                                   storage_uri=f"async+redis://{proxy.address}",
                                   key_prefix=unique_prefix(), storage_timeout_s=0.25,
                                   on_storage_error=on_error, breaker_open_s=0.5)
        limiter = StorageLimiter(options)
        async with echo_server(options, limiter=limiter) as channel:
            async def connected() -> bool:  # counting, no failure in the breaker's streak
                return await attempt(channel) is None and not limiter.breaker.dirty

            await until(connected, timeout_s=10, what="connected, counting")
            base = limiter.storage_errors
            proxy.blackhole()
            took, errors = [], []
            for _ in range(8):
                t0 = time.monotonic()
                err = await attempt(channel)
                took.append(time.monotonic() - t0)
                errors.append(limiter.storage_errors - base)
                if on_error == "allow":
                    assert err is None
                else:
                    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
            # the first waits the storage timeout; it and the next two each fail on the
            # storage (none skipped: breaker_failures=3), which opens the breaker; then it
            # answers at once (a probe every 0.5 s+ may wait again); margins for a loaded
            # machine
            assert took[0] >= 0.2, took
            assert errors[:3] == [1, 2, 3], (errors, took)
            assert limiter.breaker.opened == 1, (errors, took)
            fast = [t for t in took[3:] if t < 0.15]
            assert len(fast) >= 3, took
            await proxy.start()  # answers again

            async def limited() -> bool:
                await asyncio.sleep(0.3)
                errs = [await attempt(channel) for _ in range(8)]
                return any(e is not None and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                           for e in errs)

            await until(limited, timeout_s=10, what="limit enforced after the hang")


async def test_a_burst_of_storage_timeouts_opens_the_breaker_for_breaker_open_s_only(
    shared_redis: str,
) -> None:
    """Redis hangs while several calls wait on it: they all time out together. The breaker
    opens once and probes after ``breaker_open_s``; only the *probe's* failure doubles the
    open time. The calls that were already waiting when it opened each counted as a failed
    probe: eight concurrent timeouts kept it open for ``breaker_max_open_s`` (30 s here)
    after Redis was back."""
    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        limiter = _breaker_limiter(proxy, breaker_failures=3, breaker_open_s=1.0,
                                   breaker_max_open_s=30.0)
        m = "/svc.v1.Svc/Call"
        try:
            assert await limiter.check(m, "caller") is None  # connected, counting
            proxy.blackhole()
            results = await asyncio.gather(*(limiter.check(m, f"c{i}") for i in range(8)))
            assert all(r is not None and r.code is grpc.StatusCode.UNAVAILABLE
                       for r in results)
            assert limiter.breaker.is_open and limiter.breaker.opened == 1
            opened_at = time.monotonic()
            await proxy.start()  # Redis answers again
            admitted = False
            while time.monotonic() - opened_at < 6.0:  # open 1 s, a failed probe 2 s more
                if await limiter.check(m, "caller") is None:
                    admitted = True
                    break
                await asyncio.sleep(0.1)
            assert admitted, "the breaker stayed open far longer than breaker_open_s"
        finally:
            await limiter.aclose()


def test_only_the_probe_frees_the_probe_slot_or_reopens_the_breaker() -> None:
    """While open, one caller probes and the rest skip (StorageBreaker). A call let
    through before it opened (``probe=False``) that is then cancelled or fails frees no
    probe slot and doubles nothing: a second probe was let through while the first was
    out, each waiting ``storage_timeout_s`` on a hung storage."""
    now = [0.0]
    b = StorageBreaker(failures=1, open_s=1.0, max_open_s=4.0, clock=lambda: now[0])
    assert b.allow() and not b.is_open  # call A, closed: goes to the storage (hangs)
    assert b.allow()  # call B, closed
    b.failure(probe=False)  # B times out: open until 1.0
    assert b.is_open
    now[0] = 1.0
    assert b.allow() and b.is_open  # call C: the probe
    b.abandoned(probe=False)  # A's caller gives up: A was not the probe
    assert not b.allow(), "a second probe was let through while the first is out"
    b.failure(probe=False)  # A failing instead: the same
    assert not b.allow()
    b.failure(probe=True)  # C, the probe, fails: open for 2 s
    now[0] = 2.9
    assert not b.allow()
    now[0] = 3.0
    assert b.allow()  # the next probe


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
async def test_retry_after_of_a_multi_part_rule_is_when_every_part_admits(
    strategy: str,
) -> None:
    """Rule "1/second;1/minute" (every part must admit a call): after one call the minute
    part refuses until its window ends, so ``retry-after`` is about a minute (RFC 9110
    10.2.3: the wait before the caller may succeed). It was the first refusing part's 1 s,
    which sent a client that honours it back into another refusal."""
    async with echo_server(RateLimitOptions(default_rule="1/second;1/minute",
                                            strategy=strategy)) as channel:  # type: ignore[arg-type]
        assert await attempt(channel) is None
        err = await attempt(channel)
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        after = int(dict(err.trailing_metadata() or ())["retry-after"])
        assert 55 <= after <= 60, (after, err.details())


_BUILD_TOGETHER = """
import threading
from meshkit.resilience import RateLimitInterceptor, RateLimitOptions
opts = RateLimitOptions(rules={"*": "10/second"}, storage_uri="async+redis://127.0.0.1:6379")
gate = threading.Barrier(2)
errors = []
def build():
    gate.wait()
    try:
        RateLimitInterceptor(opts)
    except Exception as e:
        errors.append(repr(e)[:300])
threads = [threading.Thread(target=build) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join(30)
print("ERRORS", errors)
"""


@pytest.mark.timeout(180)
def test_two_threads_build_the_redis_storage_at_once() -> None:
    """Two servers started at once in two threads (each ``asyncio.run(serve(...))`` with
    the same ``async+redis`` rate limits) both build the storage. ``limits`` imports the
    driver lazily and takes it as imported once it is in ``sys.modules``, which another
    thread's import in progress puts it: one server failed to start with a ConfigError
    (``partially initialized module 'coredis' has no attribute 'Redis'``, or "minimum
    version of 3.4.0 for 'coredis' could not be found"). Fresh interpreters (the driver
    not imported yet), three tries; no Redis needed (the storage connects on first
    use)."""
    outputs = []
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", _BUILD_TOGETHER], cwd=_REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout.strip().splitlines()[-1])
    assert outputs == ["ERRORS []"] * 3, outputs


@pytest.mark.parametrize(("uptime_s", "rule"), [(7_200.0, "100/day"), (1_800.0, "100/hour")])
async def test_a_sliding_window_grants_its_whole_budget_on_a_recently_booted_host(
        monkeypatch: pytest.MonkeyPatch, uptime_s: float, rule: str) -> None:
    """With the memory storage's windows on ``time.monotonic()``, which counts from boot,
    limits named the sliding window's two counters ``int((now - expiry) / expiry)`` and
    ``int(now / expiry)``: while the uptime was below the window's length both were ``0``,
    one counter counted twice, and a caller of "100/day" on a host up two hours was
    refused after 53 (52 of 100/day on a host up 73 minutes). The monotonic clock is now
    read from an epoch-sized origin: the whole budget whatever the uptime."""
    real = time.monotonic
    start = real()
    monkeypatch.setattr(time, "monotonic", lambda: real() - start + uptime_s)
    limiter = StorageLimiter(RateLimitOptions(rules={"/s.S/M": rule}))
    try:
        admitted = sum(limiter.check_now("/s.S/M", "alice") is None for _ in range(150))
    finally:
        await limiter.aclose()
    assert admitted == 100, f"{rule} at {uptime_s:.0f} s of uptime admitted {admitted}"
