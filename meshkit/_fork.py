"""Objects that start afresh in a child made by ``os.fork()``: one hook per kind.

A low-level module (standard library only), so any meshkit package may use it: the
registries (their connections, sessions, lookup threads and heartbeats are the parent's)
and the retry backoff (its generator's state is the parent's: every worker forked from
one process would draw the same "random" delays), and the balancers (their picks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import stat
import weakref
from collections.abc import Iterable
from typing import Any, Protocol, TypeVar

__all__ = ["ForgetsParent", "ForkSafeRandom", "name_dev_null", "reset_in_forked_child"]

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


def name_dev_null(sockets: Iterable[Any]) -> None:
    """In a forked child: make the child's copies of the descriptors of ``sockets`` (the
    parent's connections: objects with ``fileno()``, ``-1`` for a closed one) name
    ``/dev/null`` (``os.dup2``, non-inheritable), so the child holds none of the parent's
    connections open, while the parent's socket and its registration in the epoll
    instance the two processes share stay as they were (a registration goes only when
    every descriptor of its open file is closed). A later close of the number in the
    child closes ``/dev/null``: a transport closed or collected there asks the shared
    epoll instance to remove it, which it refuses (EPERM; asyncio's and uvloop's
    selectors ignore that), and a byte written there (TLS ``close_notify``) fails
    (ENOTSOCK) instead of reaching the parent's stream. A descriptor that is no socket
    is left alone; no ``OSError`` is raised. Used for the registries' aiohttp sessions
    and the rate limiter's Redis connections."""
    fds = {fd for sock in sockets if (fd := sock.fileno()) >= 0}  # -1: closed
    if not fds:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
