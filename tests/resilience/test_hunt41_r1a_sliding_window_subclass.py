"""A subclass of :class:`SweepThrottledMemoryStorage` (public, ``limits``' ``memory://``
storage) that overrides a step of ``limits``' sliding-window hit (``get``, ``incr``,
``sliding_window_keys``, ``_get_sliding_window_info``) has that step run, as with
``limits``' own method: the one-frame copy, which writes those steps out, is kept only by
classes that do not override them."""

from __future__ import annotations

import math
from typing import Any

from meshkit.resilience import ratelimit
from meshkit.resilience.ratelimit import SweepThrottledMemoryStorage


def _quiet(storage: SweepThrottledMemoryStorage) -> SweepThrottledMemoryStorage:
    storage.close()
    storage._next_sweep_s = math.inf
    return storage


class _Counting(SweepThrottledMemoryStorage):
    """Counts the steps it overrides (e.g. a user's metrics or a shared counter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[str] = []

    def get(self, key: str) -> int:
        self.steps.append("get")
        return super().get(key)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self.steps.append("incr")
        return super().incr(key, expiry, amount)


class _Plain(SweepThrottledMemoryStorage):
    """Overrides none of the hit's steps."""


class _Own(_Counting):
    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        return False


def test_a_subclass_overriding_a_step_has_it_run() -> None:
    storage = _quiet(_Counting("memory://"))
    assert storage.acquire_sliding_window_entry("k", 5, 60) is True
    # limits' method: _get_sliding_window_info's two gets, incr (and its own get)
    assert storage.steps == ["get", "get", "incr", "get"]
    assert storage.acquire_sliding_window_entry("k", 1, 60) is False
    assert storage.steps[4:] == ["get", "get"]


def test_other_classes_keep_theirs() -> None:
    assert ratelimit.ONE_FRAME_SLIDING_WINDOW
    copy = ratelimit._acquire_sliding_window_entry
    assert SweepThrottledMemoryStorage.acquire_sliding_window_entry is copy
    # (limits wraps a subclass's methods in its error translator, _wrap_errors)
    assert ratelimit._unwrapped(_Plain.acquire_sliding_window_entry) is copy
    own = _quiet(_Own("memory://"))
    assert own.acquire_sliding_window_entry("k", 5, 60) is False and own.steps == []
