"""Objects that start afresh in a child made by ``os.fork()``: one hook per kind.

A low-level module (standard library only), so any meshkit package may use it: the
registries (their connections, sessions, lookup threads and heartbeats are the parent's)
and the retry backoff (its generator's state is the parent's: every worker forked from
one process would draw the same "random" delays), and the balancers (their picks).
"""

from __future__ import annotations

import logging
import os
import random
import weakref
from typing import Protocol, TypeVar

__all__ = ["ForgetsParent", "ForkSafeRandom", "reset_in_forked_child"]

_log = logging.getLogger("meshkit.fork")


class ForgetsParent(Protocol):
    """What :func:`reset_in_forked_child` tracks: an object that starts afresh in a child
    made by ``os.fork()`` when its ``_forget_parent()`` is called there."""

    def _forget_parent(self) -> None: ...


_F = TypeVar("_F", bound=ForgetsParent)


def reset_in_forked_child(kind: type[_F]) -> weakref.WeakSet[_F]:
    """A set, held weakly, of ``kind`` objects (a class with ``_forget_parent()``): in a
    child made by ``os.fork()`` each object in it then has its ``_forget_parent()``
    called (``os.register_at_fork(after_in_child=...)``, after the hooks registered
    before this call; none on Windows, which has no fork). Add each object as it is
    made. ``kind`` only types the set. An object whose ``_forget_parent()`` raises is
    logged (a warning of the ``meshkit.fork`` logger in the child, with the error) and
    the others are still reset: stopping there left every later object of the kind (in
    no set order) with its parent's locks, threads and registrations."""
    objects: weakref.WeakSet[_F] = weakref.WeakSet()

    def after_fork_in_child() -> None:
        for obj in list(objects):
            try:
                obj._forget_parent()
            except Exception:
                _log.warning("could not reset a %s in a forked child", type(obj).__name__,
                             exc_info=True)

    if hasattr(os, "register_at_fork"):  # not on Windows
        os.register_at_fork(after_in_child=after_fork_in_child)
    return objects


class ForkSafeRandom(random.Random):
    """A ``random.Random`` reseeded (from ``os.urandom``) in a child made by
    ``os.fork()``, as CPython reseeds its module-level generator (``Lib/random.py``).

    The generator meshkit makes when the caller gives none (a retry ``Backoff``'s jitter,
    a balancer's picks): one made before a pre-fork server forks its workers
    (module-level options, a channel dialled in the parent) otherwise gave every worker
    the parent's state, so the workers drew the same "random" numbers in lock-step.
    Drawing costs what ``random.Random``'s does (the methods are its own); the reseed is
    done once per fork. A generator the caller passes is the caller's, never reseeded.

    Args:
        x: the seed, as ``random.Random`` (default ``None``: from ``os.urandom``).
    """

    def __init__(self, x: int | float | str | bytes | bytearray | None = None) -> None:
        super().__init__(x)
        _randoms.add(self)

    def _forget_parent(self) -> None:
        """In a forked child: a fresh seed from ``os.urandom``."""
        self.seed()


_randoms = reset_in_forked_child(ForkSafeRandom)
