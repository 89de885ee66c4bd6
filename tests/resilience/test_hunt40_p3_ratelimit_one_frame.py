"""A ``memory://`` rule of one limit is checked in one frame (the storage hit inline in the
breaker's check): the same answers, steps and failures as the check around a separate
hit, which rules of several limits keep."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import grpc
import pytest

from meshkit.resilience import RateLimitOptions
from meshkit.resilience.ratelimit import StorageLimiter

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
_CHECK_FRAMES = {"check", "hit", "check_one"}


def _frames_of(check: Any, key: str) -> list[str]:
    """The ratelimit module's check and hit frames one ``check(key)`` enters."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if (
            event == "call"
            and code.co_name in _CHECK_FRAMES
            and code.co_filename.endswith("ratelimit.py")
        ):
            seen.append(code.co_name)

    sys.setprofile(profile)
    try:
        check(key)
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_one_limit_rule_is_checked_in_one_frame(strategy: str) -> None:
    limiter = StorageLimiter(RateLimitOptions(default_rule="3/minute", strategy=strategy))
    check = limiter.checker("/s.A/M")
    assert check is not None
    assert _frames_of(check, "alice") == ["check_one"]
    assert _frames_of(check, "alice") == ["check_one"]  # a known caller too
    several = StorageLimiter(
        RateLimitOptions(default_rule="3/minute;100/hour", strategy=strategy)
    ).checker("/s.A/M")
    assert several is not None and len(_frames_of(several, "alice")) == 2  # check, hit


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("rule", ["3/minute", "3/minute;100/hour"])
def test_one_and_several_limits_answer_alike(strategy: str, rule: str) -> None:
    """Three calls admitted, the fourth refused RESOURCE_EXHAUSTED with a wait; another
    caller and a long key (kept as its digest) counted apart, the long key's calls
    counted together."""
    limiter = StorageLimiter(RateLimitOptions(default_rule=rule, strategy=strategy))
    check = limiter.checker("/s.A/M")
    assert check is not None
    long_key = "k" * 200
    for key in ("alice", long_key):
        assert [check(key) for _ in range(3)] == [None, None, None]
        refused = check(key)
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.retry_after_s is not None and refused.retry_after_s >= 1
    assert check("bob") is None
    assert check("k" * 199) is None  # another long key: its own budget


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_a_failing_refusal_step_is_a_storage_failure(
    on_error: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step of the refusal failing (the window read for its wait) fails the check as
    configured and counts towards the breaker, as a failing hit does."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/minute", on_storage_error=on_error))
    check = limiter.checker("/s.A/M")
    assert check is not None
    assert check("alice") is None

    def broken(*_: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(StorageLimiter, "_window", broken)
    got = check("alice")
    assert (got.code if got is not None else None) is (
        grpc.StatusCode.UNAVAILABLE if on_error == "deny" else None
    )
    assert limiter.breaker.dirty and not limiter.breaker.is_open
