"""The lock that the first read of a lazily imported name takes (PEP 562 packages).

``meshkit``, ``meshkit.auth`` and ``meshkit.observability`` import the module behind a
public name when the name is first read (``__getattr__``). Several of those modules import
shared ones (``meshkit.resilience``, ``meshkit.discovery._types``); threads reading two
names for the first time at once imported them concurrently, and Python's import system
raised ``_DeadlockError`` or ``KeyError`` in one of them (an eager package imported
everything in one thread). Every first read imports under :func:`first_read_lock`, one
thread at a time.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

__all__ = ["first_read_lock"]

_NAME = "meshkit:lazy-package-first-read"  # a name no module has


def first_read_lock() -> Any:
    """A context manager: the one import lock every first read of meshkit's lazy packages
    imports under. It is one of Python's own module import locks
    (``importlib._bootstrap._ModuleLockManager``, under :data:`_NAME`): re-entrant, and a
    real cycle with another thread's import is reported (``_DeadlockError``) rather than
    hung, as between any two imports. On a Python without that helper, no lock (a
    ``nullcontext``): the first reads are as they were without one."""
    manager = getattr(importlib._bootstrap, "_ModuleLockManager", None)
    return contextlib.nullcontext() if manager is None else manager(_NAME)
