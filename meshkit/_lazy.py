"""The lock that the first read of a lazily imported name takes (PEP 562 packages).

``meshkit``, ``meshkit.auth`` and ``meshkit.observability`` import the module behind a
public name when the name is first read (``__getattr__``). Several of those modules import
shared ones (``meshkit.resilience``, ``meshkit.discovery._types``); threads reading two
names for the first time at once imported them concurrently, and Python's import system
raised ``_DeadlockError`` or ``KeyError`` in one of them (an eager package imported
everything in one thread). Every first read imports under :func:`first_read_lock`, one
thread at a time. A child made by ``os.fork()`` while another thread held that lock (in a
first read) forgets it (:func:`_forget_in_forked_child`): the holder does not exist there,
and the child's own first reads waited for it for ever.
"""

from __future__ import annotations

import contextlib
import importlib
import os
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


def _forget_in_forked_child() -> None:
    """In a child made by ``os.fork()``: drop the first-read lock the parent's import system
    kept (``importlib._bootstrap._module_locks``), so the child's first reads make a fresh
    one. Held by another thread of the parent at the fork (a thread reading
    ``meshkit.dial`` first while the main thread forks a pre-fork worker), the copy stayed
    held in the child, where that thread does not run: every first read there, even of a
    name whose module was loaded, waited for ever. A module that thread was importing is
    still locked in the child, as in any Python program forked during an import. Run by
    ``os.register_at_fork(after_in_child=...)`` (not on Windows); never raises."""
    locks = getattr(importlib._bootstrap, "_module_locks", None)
    if isinstance(locks, dict):
        locks.pop(_NAME, None)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_forget_in_forked_child)
