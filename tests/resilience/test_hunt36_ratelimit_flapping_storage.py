"""A storage that fails every other hit (an overloaded Redis timing out some commands, a
flaky link) logs its outages once per interval, not once per failure.

An outage was logged when it started ('rate limit storage unavailable', warning) and
when it ended ('rate limit storage recovered', info), and any answer ended it: with
failures between answers (the breaker never opening, its streak reset by each answer)
every failure started a new outage, two lines per failure (measured: 20 hits
alternating, 10 warnings and 10 infos; at 1,000 calls/s with 10 % timeouts, 200 lines
a second).
"""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter


async def test_a_flapping_storage_logs_one_line_of_each_then_counts() -> None:
    now = [100.0]
    limiter = StorageLimiter(RateLimitOptions(default_rule="1000/second"),
                             clock=lambda: now[0])
    real = limiter._acquire_window
    calls = [0]

    def flaky(*args: Any) -> bool:
        calls[0] += 1
        if calls[0] % 2:
            raise KeyError("boom")
        return bool(real(*args))

    limiter._acquire_window = flaky
    with capture_logs() as logs:
        for _ in range(20):
            assert limiter.check_now("/s.A/M", "k") is None  # fails open
            now[0] += 0.01
    events = [e["event"] for e in logs]
    assert events == ["rate limit storage unavailable", "rate limit storage recovered"], events
    assert not limiter.breaker.is_open  # (each answer reset its streak)
    with capture_logs() as logs:
        now[0] += 61.0  # the interval over: the counts are told at the next outage
        assert limiter.check_now("/s.A/M", "k") is None
    told = {e["event"]: e for e in logs}
    assert told["rate limit storage outages"]["count"] == 9, logs
    with capture_logs() as logs:  # and the rest at the limiter's close
        await limiter.aclose()
    told = {e["event"]: e for e in logs}
    assert told["rate limit storage recoveries"]["count"] == 9, logs
    assert told["rate limit storage outages"]["count"] == 1, logs
