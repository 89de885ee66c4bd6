"""The server's refusal log lines: one per kind of refusal and interval, the rest counted.

A client with a bad or expired token, a misconfigured caller or a credential-stuffing
attacker at 10k calls/s got one ``call refused`` info line per refused call from each
server (on top of the access log's line for the call). Now the first refusal of each kind
(``by``, ``code``, ``reason``, ``method``) is logged at once, in full, and later ones of
the kind within the interval are counted and told in one ``calls refused`` line with
``count=`` when the interval ends (or at the next refusal after it, or when the server
stops): the volume is bounded and nothing is silently lost. Real grpc.aio servers on
loopback; the interval is shortened so the summaries come within the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import re
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

import meshkit
import meshkit.auth._server as auth_server
from meshkit._log import RepeatLog
from meshkit.auth import (
    AuthOptions,
    AuthzInterceptor,
    AuthzPolicy,
    Claims,
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    Rule,
    TokenIssuer,
    VerifierOptions,
    current_claims,
)
from meshkit.auth._context import _claims
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.errors import ConfigError, RegistryError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.auth.conftest import AUDIENCE, ISSUER, StartServer, auth_handler, method
from tests.support.skips import skip_or_fail
from tests.support.wait import until

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
# Long enough for 200 calls on a loaded box, short enough to wait for: the 200 calls took
# 0.3 s on the 2-core box at a load average of 13, and the tests' line bounds hold as long
# as they end within two intervals (3 s) of the first refusal (was 3.0: 6 s).
INTERVAL_S = 1.5
BAD_TOKEN = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2VjcmV0LXNpZ25hdHVyZQ"
LogEntries = list[dict[str, Any]]


@pytest.fixture(autouse=True)
def _short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interceptors built in these tests summarise every ``INTERVAL_S`` seconds."""
    monkeypatch.setattr(auth_server, "REFUSAL_LOG_INTERVAL_S", INTERVAL_S)


def refusal_lines(logs: LogEntries) -> LogEntries:
    return [e for e in logs if e["event"] in ("call refused", "calls refused")]


def told(logs: LogEntries, **kind: Any) -> int:
    """Refused calls the lines account for (of the kind whose fields are ``kind``): one per
    ``call refused`` line, ``count`` per ``calls refused`` line."""
    return sum(1 if e["event"] == "call refused" else int(e["count"])
               for e in refusal_lines(logs)
               if all(e.get(k) == v for k, v in kind.items()))


async def refused(port: int, n: int, code: grpc.StatusCode, name: str = "Read", *,
                  metadata: Sequence[tuple[str, str]] | None = None) -> None:
    """Make ``n`` calls to ``name`` on ``127.0.0.1:port``, 20 at a time, one channel;
    each must fail with ``code``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = channel.unary_unary(method(name))
        for first in range(0, n, 20):
            results = await asyncio.gather(
                *(stub(b"", timeout=10, metadata=metadata) for _ in range(min(20, n - first))),
                return_exceptions=True)
            for r in results:
                assert isinstance(r, grpc.aio.AioRpcError) and r.code() is code, r


def jwt_interceptor(keys: KeySet) -> JWTAuthInterceptor:
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    return JWTAuthInterceptor(verifier, JWTAuthOptions())


async def test_200_bad_tokens_make_a_bounded_number_of_lines_that_count_them_all(
        start_server: StartServer, keys: KeySet) -> None:
    """200 calls with a bad token: every one was logged ``call refused`` (200 info lines
    from one caller's mistake). Now the first is logged at once with its fields and the
    199 others in one ``calls refused`` line (``count=199``) once the interval ends; never
    the token."""
    port = await start_server(interceptors=(jwt_interceptor(keys),))
    with capture_logs() as logs:
        await refused(port, 200, UNAUTH, metadata=[("authorization", f"Bearer {BAD_TOKEN}")])
        await until(lambda: told(logs) >= 200, timeout_s=INTERVAL_S + 20,
                    what="the 200 refusals told")
    lines = refusal_lines(logs)
    assert len(lines) <= 3, f"{len(lines)} refusal lines for 200 refused calls"
    assert told(logs) == 200, lines
    first = lines[0]
    assert first["event"] == "call refused", lines
    assert {k: first[k] for k in ("by", "code", "method")} == {
        "by": "jwt", "code": "UNAUTHENTICATED", "method": method("Read")}, first
    kind = {k: first[k] for k in ("by", "code", "reason", "method")}
    assert all({k: e[k] for k in kind} == kind for e in lines), lines
    text = repr(lines)
    for secret in (BAD_TOKEN, BAD_TOKEN[:24], BAD_TOKEN[-24:]):
        assert secret not in text


async def test_200_authz_denials_make_a_bounded_number_of_lines_that_count_them_all(
        start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """200 calls a valid token makes but the policy denies (its subject is not allowed):
    one ``call refused`` line with the rule and peer, then ``calls refused`` with
    ``count=199``; neither the token nor its subject (a claim) in any line."""
    policy = AuthzPolicy(rules={method("Read"): Rule(allow_subjects=("alice",))})
    port = await start_server(interceptors=(jwt_interceptor(keys), AuthzInterceptor(policy)))
    token = issuer.issue("mallory-the-subject")
    with capture_logs() as logs:
        await refused(port, 200, DENIED, metadata=[("authorization", f"Bearer {token}")])
        await until(lambda: told(logs) >= 200, timeout_s=INTERVAL_S + 20,
                    what="the 200 refusals told")
    lines = refusal_lines(logs)
    assert len(lines) <= 3, f"{len(lines)} refusal lines for 200 refused calls"
    assert told(logs) == 200, lines
    first = lines[0]
    assert first["event"] == "call refused" and first["by"] == "authz", lines
    assert first["code"] == "PERMISSION_DENIED" and first["reason"] == "no allow rule matched"
    assert first["rule"] == method("Read") and "peer" in first, first
    text = repr(lines)
    for secret in (token, token[:24], token[-24:], "mallory"):
        assert secret not in text


async def test_each_kind_of_refusal_is_logged_and_counted_on_its_own(
        start_server: StartServer, keys: KeySet) -> None:
    """Three kinds of refusal interleaved (a bad token on Read and on Write, no token on
    Read), 60 calls each: each kind's first call has its own ``call refused`` line and
    the rest of the kind its own count; no kind hides another."""
    port = await start_server(interceptors=(jwt_interceptor(keys),))
    bad = [("authorization", f"Bearer {BAD_TOKEN}")]
    with capture_logs() as logs:
        for _ in range(3):
            await refused(port, 20, UNAUTH, "Read", metadata=bad)
            await refused(port, 20, UNAUTH, "Write", metadata=bad)
            await refused(port, 20, UNAUTH, "Read")
        await until(lambda: told(logs) >= 180, timeout_s=INTERVAL_S + 20,
                    what="the 180 refusals told")
    lines = refusal_lines(logs)
    assert len(lines) <= 9, f"{len(lines)} refusal lines for 3 kinds of refusal"
    assert told(logs) == 180, lines
    firsts = [(e["method"], e["reason"]) for e in lines if e["event"] == "call refused"]
    assert len(firsts) == len(set(firsts)) == 3, lines
    for m, reason in firsts:
        assert told(logs, method=m, reason=reason) == 60, (m, reason, lines)
    assert (method("Read"), "no token") in firsts


async def test_the_counts_not_told_yet_are_logged_when_the_interceptor_closes(
        start_server: StartServer, keys: KeySet, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default interval (60 s), a server stopped 50 refusals into it: its
    ``aclose()`` (which MeshServer calls once stopped) logs the count of the 49 not told."""
    monkeypatch.setattr(auth_server, "REFUSAL_LOG_INTERVAL_S", 60.0)
    interceptor = jwt_interceptor(keys)
    port = await start_server(interceptors=(interceptor,))
    with capture_logs() as logs:
        await refused(port, 50, UNAUTH)
        assert [e["event"] for e in refusal_lines(logs)] == ["call refused"]
        await interceptor.aclose()
    lines = refusal_lines(logs)
    assert [e["event"] for e in lines] == ["call refused", "calls refused"], lines
    assert lines[1]["count"] == 49 and lines[1]["by"] == "jwt", lines
    assert lines[1]["method"] == method("Read") and lines[1]["reason"] == "no token", lines


# -- the shared helper, on a clock the test moves -----------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def repeat_log(clock: Clock, max_kinds: int = 256) -> RepeatLog:
    return RepeatLog(structlog.get_logger("meshkit.auth"), "call refused", "calls refused",
                     key_fields=("method", "code", "reason"), fields={"by": "jwt"},
                     interval_s=60.0, max_kinds=max_kinds, clock=clock)


def test_a_count_is_told_at_the_next_event_after_its_interval_and_quiet_kinds_are_news(
        ) -> None:
    """No event loop (no timer): the count of an interval is logged at the kind's next
    event after it, which opens the next count; after a whole interval with no event the
    kind is news again (a full line), as with the timer."""
    clock = Clock()
    log = repeat_log(clock)
    kind = ("/a.B/C", "UNAUTHENTICATED", "no token")
    with capture_logs() as logs:
        for _ in range(10):
            log.report(kind)
            clock.now += 1.0
        clock.now += 60.0
        log.report(kind)  # the 11th: tells the 9 and opens the next count
        clock.now += 61.0
        log.report(kind)  # the 12th: tells the 11th
        clock.now += 121.0
        log.report(kind)  # the 13th, after a quiet interval: tells the 12th, and news
    assert [(e["event"], e.get("count")) for e in logs] == [
        ("call refused", None), ("calls refused", 9), ("calls refused", 1),
        ("calls refused", 1), ("call refused", None)], logs
    assert told(logs) == 13
    assert logs[1] == {"event": "calls refused", "log_level": "info", "by": "jwt",
                       "method": "/a.B/C", "code": "UNAUTHENTICATED", "reason": "no token",
                       "count": 9, "over_s": 60.0}



async def test_the_timer_tells_a_count_then_forgets_the_quiet_kind() -> None:
    """On an event loop: a kind's count is told by the timer when its interval ends,
    with no later event; after a whole interval with no event the kind is forgotten
    (no timer left), so its next event is logged in full."""
    log = RepeatLog(structlog.get_logger("meshkit.auth"), "call refused", "calls refused",
                    key_fields=("method",), fields={"by": "jwt"}, interval_s=0.3)
    with capture_logs() as logs:
        for _ in range(3):
            log.report(("/a.B/C",))
        await until(lambda: len(logs) == 2, timeout_s=20, what="the count told")
        assert logs[1]["event"] == "calls refused" and logs[1]["count"] == 2, logs
        await until(lambda: not log._kinds and log._timer is None, timeout_s=20,
                    what="the quiet kind forgotten")
        log.report(("/a.B/C",))
    assert [e["event"] for e in logs] == ["call refused", "calls refused", "call refused"]
    log.flush()


def test_a_flood_of_distinct_kinds_keeps_memory_and_lines_bounded() -> None:
    """10,000 refusals each of a new kind (a flood of distinct method names): at most
    ``max_kinds`` kinds are tracked (plus one shared by the rest, marked untracked), so
    memory and lines stay bounded, and every refusal is still told."""
    clock = Clock()
    log = repeat_log(clock, max_kinds=8)
    with capture_logs() as logs:
        for i in range(10_000):
            log.report((f"/x.Y/M{i}", "PERMISSION_DENIED", "no allow rule matched"))
        assert len(log._kinds) == 9
        log.flush()
    assert len(logs) == 10, [e["event"] for e in logs]
    assert told(logs) == 10_000
    untracked = [e for e in logs if e.get("untracked")]
    assert [e["event"] for e in untracked] == ["call refused", "calls refused"]
    assert untracked[0]["method"] == "/x.Y/M8" and untracked[1]["count"] == 10_000 - 9
    assert "method" not in untracked[1] and untracked[1]["by"] == "jwt"
    assert not log._kinds


@pytest.mark.parametrize(("option", "value"), [("interval_s", 0), ("interval_s", math.inf),
                                               ("interval_s", True), ("max_kinds", 0),
                                               ("max_kinds", 1.5), ("max_kinds", True)])
def test_bad_options_are_refused_quoting_the_value(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(value))):
        RepeatLog(None, "e", "s", key_fields=("k",), **{option: value})


def _some_claims(subject: str) -> Claims:
    return Claims(subject=subject, issuer=ISSUER, audience=(AUDIENCE,), scopes=frozenset(),
                  expires_at=2e9)


async def test_the_timers_count_carries_the_context_the_log_was_built_in_not_a_calls(
        ) -> None:
    """The count the timer tells carries the fields the application bound with
    ``structlog.contextvars`` where the log was built (at start-up: deployment, pod), as
    its first line and meshkit's other lines do; it ran in an empty
    ``contextvars.Context()`` and had none of them. Neither meshkit's per-call variables
    of where it was built (the claims of a call that built it) nor the fields and claims
    of the call whose report armed the timer reach it."""
    async def build() -> RepeatLog:
        structlog.contextvars.bind_contextvars(deployment="eu-west-1")
        _claims.set(_some_claims("builder-call"))
        return RepeatLog(structlog.get_logger("meshkit.auth"), "call refused",
                         "calls refused", key_fields=("method",), fields={"by": "jwt"},
                         interval_s=0.3)

    async def report(log: RepeatLog, n: int) -> None:  # a call of its own (a task)
        structlog.contextvars.bind_contextvars(request_id="r-42")
        _claims.set(_some_claims("caller-sub"))
        for _ in range(n):
            log.report(("/a.B/C",))

    def claims_seen(_logger: Any, _name: str, event: Any) -> Any:
        claims = current_claims()
        event["claims_sub"] = None if claims is None else claims.subject
        return event

    log = await asyncio.create_task(build(), context=contextvars.Context())
    with capture_logs(processors=[structlog.contextvars.merge_contextvars,
                                  claims_seen]) as logs:
        await asyncio.create_task(report(log, 3))
        await until(lambda: len(logs) >= 2, timeout_s=20, what="the timer's count")
    log.flush()
    assert [(e["event"], e.get("count")) for e in logs] == [
        ("call refused", None), ("calls refused", 2)], logs
    summary = logs[1]
    assert summary.get("deployment") == "eu-west-1", summary
    assert "request_id" not in summary and summary["claims_sub"] is None, summary


async def test_a_timer_told_count_carries_the_fields_the_application_bound_at_start_up(
        tmp_path: Path) -> None:
    """A MeshServer built after the application bound its fields
    (``structlog.contextvars``, as MeshServer.start's docstring says they reach its
    calls): the ``call refused`` line carried ``deployment``, the timer's ``calls
    refused`` line did not (a log view filtered on the deployment showed the first
    refusal and never the count of the others)."""
    keys = KeySet.generate("ES256")
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=2.0, poll_interval_s=0.05))

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    structlog.contextvars.bind_contextvars(deployment="eu-west-1")
    try:
        srv = meshkit.MeshServer("whod", [(add, None)], registry=reg,
                                 options=meshkit.ServeOptions(
                                     insecure=True, auth=AuthOptions(verifier=verifier),
                                     drain_delay_s=0, grace_s=0.5, admin=None))
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await asyncio.wait_for(srv.start(), 10)
            try:
                await refused(srv.port, 5, UNAUTH, "Whoami")
                # the timer's count: INTERVAL_S on, at most a quarter of it late
                await until(lambda: told(logs) >= 5, timeout_s=INTERVAL_S + 20,
                            what="the timer's count")
            finally:
                await asyncio.wait_for(srv.drain(), 10)
                await reg.close()
    finally:
        structlog.contextvars.unbind_contextvars("deployment")
    lines = refusal_lines(logs)
    assert told(logs) == 5 and lines[0]["event"] == "call refused", lines
    assert lines[0].get("deployment") == "eu-west-1", lines
    summaries = [e for e in lines if e["event"] == "calls refused"]
    assert summaries and all(e.get("deployment") == "eu-west-1" for e in summaries), lines


# -- the rate limiter's line per refused call whose window could not be read ---------------

def redis_uri() -> str:
    """The shared Redis on 127.0.0.1:6379 (skip if absent; fail under CI)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            up = s.recv(16).startswith(b"+PONG")
    except OSError:
        up = False
    if not up:
        skip_or_fail("no Redis answering on 127.0.0.1:6379")
    return "async+redis://127.0.0.1:6379"


async def test_refused_calls_whose_window_cannot_be_read_make_a_bounded_number_of_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller over its limit while the window reads behind ``retry-after`` fail (a
    storage slow or failing on those reads): ``rate limit window not read`` was logged
    (debug) for each refused call. Now once per kind (limit, error type) and interval,
    the rest counted (``rate limit windows not read``, told at ``aclose()`` at the
    latest)."""
    # storage_timeout_s 5, not 0.25: a hit's round trip past 0.25 s on a loaded box (the
    # suite at -n 3 on 2 cores) failed open, an admitted call the loop took for a bug
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/hour", strategy="fixed-window", storage_uri=redis_uri(),
        key_prefix=f"refusal-logs-{uuid.uuid4().hex}", storage_timeout_s=5.0))
    m = "/svc.v1.Svc/Call"
    try:
        assert await limiter.check(m, "alice") is None

        async def fails(*args: Any) -> Any:
            raise ConnectionError("lost the read")

        monkeypatch.setattr(limiter._storage, "get_expiry", fails)
        with capture_logs() as logs:
            for _ in range(200):
                refusal = await limiter.check(m, "alice")
                assert refusal is not None and refusal.retry_after_s == 3600, refusal
            await limiter.aclose()
    finally:
        await limiter.aclose()
    lines = [e for e in logs if e["event"] in ("rate limit window not read",
                                               "rate limit windows not read")]
    assert len(lines) <= 3, f"{len(lines)} lines for 200 refused calls"
    assert sum(1 if e["event"] == "rate limit window not read" else e["count"]
               for e in lines) == 200, lines
    assert lines[0]["error"] == "ConnectionError: lost the read", lines


async def test_a_mesh_server_tells_the_counts_not_told_yet_when_it_stops(
        keys: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MeshServer with JWT auth, stopped 50 refusals into the (60 s) interval: the stop
    closes its interceptors, which log the count of the 49 refusals not told yet."""
    monkeypatch.setattr(auth_server, "REFUSAL_LOG_INTERVAL_S", 60.0)
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=2.0, poll_interval_s=0.05))

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    srv = meshkit.MeshServer("whod", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        insecure=True, auth=AuthOptions(verifier=verifier), drain_delay_s=0, grace_s=0.5))
    with capture_logs() as logs:
        await asyncio.wait_for(srv.start(), 10)
        try:
            await refused(srv.port, 50, UNAUTH, "Whoami")
            assert [e["event"] for e in refusal_lines(logs)] == ["call refused"]
        finally:
            await asyncio.wait_for(srv.drain(), 10)
            await reg.close()
    lines = refusal_lines(logs)
    assert [e["event"] for e in lines] == ["call refused", "calls refused"], lines
    assert lines[1]["count"] == 49 and lines[1]["by"] == "jwt", lines
    assert lines[1]["method"] == method("Whoami") and lines[1]["reason"] == "no token"


async def test_the_window_read_counts_run_on_the_limiters_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``StorageLimiter(clock=...)`` times its outages and breaker on ``clock``, and now
    the intervals of its ``rate limit window not read`` count too (its RepeatLog was
    built on ``time.monotonic``): moved past the interval, the next failed read tells the
    count of the ones before."""
    clock = Clock()
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/hour", strategy="fixed-window", storage_uri=redis_uri(),
        key_prefix=f"refusal-logs-{uuid.uuid4().hex}"), clock=clock)
    m = "/svc.v1.Svc/Call"
    try:
        assert await limiter.check(m, "alice") is None

        async def fails(*args: Any) -> Any:
            raise ConnectionError("lost the read")

        monkeypatch.setattr(limiter._storage, "get_expiry", fails)
        with capture_logs() as logs:
            for _ in range(3):
                assert await limiter.check(m, "alice") is not None
            clock.now += 61.0
            assert await limiter.check(m, "alice") is not None
            events = [(e["event"], e.get("count")) for e in logs]
    finally:
        await limiter.aclose()
    assert events == [("rate limit window not read", None),
                      ("rate limit windows not read", 2)], events


class _LateRefusingRegistry(LocalRegistry):
    """Refuses the registration once the test has made its calls (``go`` set)."""

    go: asyncio.Event

    async def register(self, instance: Any) -> None:
        await asyncio.wait_for(self.go.wait(), 20)
        raise RegistryError("registry refused (test)")


async def test_a_failed_start_tells_the_refusals_it_counted(
        keys: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MeshServer serves calls from the moment it is bound, before its registration
    (``start()``'s last step) completes; a registration that fails undoes the start and
    stops the grpc server. The undo never closed the interceptors (only the drain did):
    the 19 refusals after the first stayed counted, told only by a timer a minute later
    on a loop a program whose start failed usually closes at once. Now the undo closes
    them as the drain does, and every refusal is told once ``start()`` has raised."""
    monkeypatch.setattr(auth_server, "REFUSAL_LOG_INTERVAL_S", 60.0)
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    reg = _LateRefusingRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=2.0,
                                             poll_interval_s=0.05))
    reg.go = asyncio.Event()

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    srv = meshkit.MeshServer("whod", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        insecure=True, auth=AuthOptions(verifier=verifier), drain_delay_s=0, grace_s=0.5,
        admin=None))
    starting = asyncio.ensure_future(srv.start())
    try:
        with capture_logs() as logs:
            await until(lambda: bool(srv.port), timeout_s=20, what="the server bound")
            await refused(srv.port, 20, UNAUTH, "Whoami")
            assert told(logs) == 1, refusal_lines(logs)
            reg.go.set()
            with pytest.raises(RegistryError):
                await asyncio.wait_for(starting, 20)
        assert told(logs) == 20, refusal_lines(logs)
        assert [e["event"] for e in refusal_lines(logs)] == ["call refused", "calls refused"]
    finally:
        reg.go.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(starting, 20)
        await reg.close()
