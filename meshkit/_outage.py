"""Outages of something meshkit re-reads on a timer, logged once: a warning when it starts,
reminders at most every minute, a line when it ends (:class:`OutageLog`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["OutageLog"]


class OutageLog:
    """The log lines of something re-read or re-fetched on a timer (certificate files, a CA
    bundle, a JWKS document) while that fails, after meshkit's outage convention (the
    registries' ``StatusTracker``, README "Discovery"): one warning when the reads start
    failing, another only when the error changes (with ``warn_on_change``) or, as a
    reminder, at most every ``remind_every_s`` (with how long and how many reads failed),
    and one info line when a read works again. No I/O. Callers serialise their reports (a
    lock, or one event loop); a race costs at most a line.

    Args:
        log: the logger to write to.
        recovered: the info line's event, e.g. ``"certificate files readable again"``.
        clock: seconds, for reminders and the outage's length (a clock stepped back
            makes the next failure a reminder, never silences them).
        remind_every_s: least time between two warnings of an unchanged failure (60).
        warn_on_change: warn again when the error differs from the last one logged
            (default ``True``: a file's new fault is news); ``False`` for a fetch whose
            errors vary from attempt to attempt (a timeout, then a refusal).
    """

    __slots__ = ("_change", "_clock", "_error", "_failures", "_log", "_recovered",
                 "_remind_every_s", "_reported_at", "_since")

    def __init__(self, log: Any, recovered: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 remind_every_s: float = 60.0, warn_on_change: bool = True) -> None:
        self._log = log
        self._change = warn_on_change
        self._recovered = recovered
        self._clock = clock
        self._remind_every_s = remind_every_s
        self._since: float | None = None  # when the current failure began
        self._reported_at = 0.0  # when it was last logged
        self._error = ""
        self._failures = 0

    @property
    def failing(self) -> bool:
        """Whether the latest read failed."""
        return self._since is not None

    def failed(self, event: str, error: str, **fields: Any) -> None:
        """Record a failed read; log ``event`` at WARNING (with ``error``, ``failures``
        and ``fields``; a later one with ``failing_for_s`` too) if it starts a failure,
        its error differs from the last one logged (``warn_on_change``), or a reminder is
        due."""
        now = self._clock()
        since = self._since
        if since is None:
            self._since = self._reported_at = now
            self._error, self._failures = error, 1
            self._log.warning(event, error=error, failures=1, **fields)
            return
        self._failures += 1
        if ((error == self._error or not self._change)
                and 0 <= now - self._reported_at < self._remind_every_s):
            return
        self._error, self._reported_at = error, now
        self._log.warning(event, error=error, failing_for_s=round(now - since, 1),
                          failures=self._failures, **fields)

    def ok(self, **fields: Any) -> None:
        """Record a successful read; log the recovery line (with ``fields``, the
        outage's length and its count of failed reads) if it ends a failure."""
        since = self._since
        if since is None:
            return
        self._since = None
        self._log.info(self._recovered, outage_s=round(self._clock() - since, 3),
                       failures=self._failures, **fields)
