"""A ``limits`` whose code is not the code of meshkit's one-frame sliding-window hit keeps
``limits``' own method (the same answers, slower) and says so once, at debug level, when
the first ``memory://`` storage is built: the fallback is silent but not invisible."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from meshkit.resilience import ratelimit
from meshkit.resilience.ratelimit import SweepThrottledMemoryStorage


def _built_storage_logs() -> list[dict[str, object]]:
    with capture_logs() as logs:
        for _ in range(2):
            SweepThrottledMemoryStorage("memory://").close()
    return [e for e in logs if "limits' own" in str(e["event"])]


def test_the_fallback_is_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "ONE_FRAME_SLIDING_WINDOW", False)
    monkeypatch.setattr(ratelimit, "_ONE_FRAME_LOGGED", False, raising=False)
    logged = _built_storage_logs()
    assert len(logged) == 1, logged
    assert logged[0]["log_level"] == "debug"
    assert logged[0]["limits_version"] == ratelimit._limits_version()


def test_the_one_frame_hit_logs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ratelimit.ONE_FRAME_SLIDING_WINDOW
    monkeypatch.setattr(ratelimit, "_ONE_FRAME_LOGGED", False, raising=False)
    assert _built_storage_logs() == []
