"""``ServeOptions.handler_threads=None`` is documented as Python's default for a thread pool
(``ThreadPoolExecutor``'s ``min(32, cpus + 4)``, "as many as the loop's default executor
they ran in before"). Python 3.13 counts the CPUs this process may run on
(``os.process_cpu_count()``: its CPU affinity, ``taskset``/cpusets), not the machine's;
meshkit kept ``os.cpu_count()``, so a server pinned to 2 CPUs of a 64-CPU host got a pool
of 32 handler threads where Python's (and the default executor's) is 6.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshkit._threads import HandlerThreads


def test_the_default_pool_size_is_pythons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: the CPUs this process may use
        monkeypatch.setattr(os, "process_cpu_count", lambda: 2)
    pythons = ThreadPoolExecutor()
    try:
        expected = pythons._max_workers
    finally:
        pythons.shutdown()
    pool = HandlerThreads(None, "t")
    try:
        assert pool._max == expected
    finally:
        pool.shutdown()


@pytest.mark.parametrize("cpus", [None, 1, 40], ids=["unknown", "one", "forty"])
def test_the_default_pool_size_for_odd_cpu_counts(monkeypatch: pytest.MonkeyPatch,
                                                  cpus: int | None) -> None:
    name = "process_cpu_count" if hasattr(os, "process_cpu_count") else "cpu_count"
    monkeypatch.setattr(os, name, lambda: cpus)
    pythons = ThreadPoolExecutor()
    try:
        expected = pythons._max_workers
    finally:
        pythons.shutdown()
    pool = HandlerThreads(None, "t")
    try:
        assert pool._max == expected == min(32, (cpus or 1) + 4)
    finally:
        pool.shutdown()
