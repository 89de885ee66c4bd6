"""SIGINT/SIGTERM for the harness's commands (the runner, ``ab``, ``profile``): both
interrupt the run with ``KeyboardInterrupt``, so its ``finally`` blocks stop every worker
process, and the previous handlers come back after. No meshkit import: ``ab`` compares
two code trees and imports neither in its own process."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

__all__ = ["interruptible", "restore"]


def interruptible() -> dict[int, Any]:
    """Make SIGINT (even when inherited as ignored, e.g. from a background job) and
    SIGTERM interrupt the run with ``KeyboardInterrupt``; returns the previous handlers
    for :func:`restore` (none set outside the main thread: left alone)."""
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not in the main thread: leave them alone
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`interruptible` replaced (``previous``, its result)."""
    for signum, handler in previous.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signum, handler)
