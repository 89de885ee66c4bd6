"""The one-frame sliding-window hit (``ratelimit._acquire_sliding_window_entry``) is taken
only while ``limits``' code is the code it copies: a ``limits`` whose methods differ in
what they compute, not only in the names they use, keeps ``limits``' own method."""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import textwrap
from pathlib import Path
from types import FunctionType

import pytest
from limits.storage import MemoryStorage

from meshkit.resilience import ratelimit
from meshkit.resilience.ratelimit import _MEMORY_CLOCK, SweepThrottledMemoryStorage


def _limits_method_changed(tmp_path: Path, old: str, new: str) -> FunctionType:
    """limits' ``acquire_sliding_window_entry`` with ``old`` replaced by ``new`` in its
    source, loaded from a file (so that its source can be read, as limits' own)."""
    method = ratelimit._unwrapped(MemoryStorage.acquire_sliding_window_entry)
    source = textwrap.dedent(inspect.getsource(method))
    assert source.count(old) == 1
    path = tmp_path / "changed_limits_memory.py"
    path.write_text("import time\nfrom math import floor\n\n\n" + source.replace(old, new))
    spec = importlib.util.spec_from_file_location("changed_limits_memory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    changed: FunctionType = module.acquire_sliding_window_entry
    return changed


def _quiet_storage() -> SweepThrottledMemoryStorage:
    storage = SweepThrottledMemoryStorage("memory://")
    storage.close()
    storage._next_sweep_s = math.inf
    return storage


# a limits release that admits a hit only below the limit (>= where 5.8 has >): the same
# names, constants and local names as 5.8's method, another answer
_OFF_BY_ONE = (
    "if floor(weighted_count) + amount > limit:",
    "if floor(weighted_count) + amount >= limit:",
)


def test_a_limits_computing_otherwise_keeps_its_own_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = _limits_method_changed(tmp_path, *_OFF_BY_ONE)
    # what that limits answers differs from the copy's answer (the copy follows 5.8)
    now = [1.7e9]
    monkeypatch.setattr(_MEMORY_CLOCK, "time", lambda: now[0])
    ours, theirs = _quiet_storage(), _quiet_storage()
    rebound = FunctionType(
        changed.__code__,
        {**vars(sys.modules[MemoryStorage.__module__]), "time": _MEMORY_CLOCK},
        changed.__name__,
        changed.__defaults__,
    )
    got = [ratelimit._acquire_sliding_window_entry(ours, "k", 2, 60) for _ in range(3)]
    want = [rebound(theirs, "k", 2, 60) for _ in range(3)]
    assert got == [True, True, False] and want == [True, False, False]
    assert ratelimit._sliding_window_code_known()
    monkeypatch.setattr(MemoryStorage, "acquire_sliding_window_entry", changed)
    assert not ratelimit._sliding_window_code_known()


def test_a_limits_whose_floor_is_another_keeps_its_own_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The methods' text unchanged, the module's ``floor`` another function (the copy
    calls :func:`math.floor`)."""
    module = sys.modules[MemoryStorage.__module__]
    assert ratelimit._sliding_window_code_known()
    monkeypatch.setattr(module, "floor", math.ceil)
    assert not ratelimit._sliding_window_code_known()
