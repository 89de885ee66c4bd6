"""Deadline propagation and admission control on the server side.

:class:`DeadlineInterceptor` (a ``grpc.aio.ServerInterceptor``) does two things per call:

* **admission** (Finagle's ``DeadlineFilter``): a call whose deadline has already passed
  (or has less than ``min_remaining_s`` left) is answered ``DEADLINE_EXCEEDED`` before the
  handler runs;
* **propagation**: while the handler runs, :func:`current_deadline` returns the call's
  absolute deadline (``time.monotonic()`` seconds), and every :func:`meshkit.dial` channel
  runs outgoing calls under ``min(own timeout, remaining - margin)``, never longer.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from typing import Any

import grpc

from meshkit._handlers import Before, WrappingInterceptor
from meshkit.errors import ConfigError

__all__ = ["DeadlineInterceptor", "DeadlineOptions", "current_deadline", "deadline_scope"]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshkit_deadline", default=None
)
# grpc reports "no deadline" as a huge remaining time; anything past a day is "none".
_NO_DEADLINE_S = 86_400.0


def current_deadline() -> float | None:
    """The deadline of the call being handled, as ``time.monotonic()`` seconds, or ``None``
    outside a handler or when the caller set no deadline."""
    return _deadline.get()


class deadline_scope:
    """Run a block as if handling a call with absolute deadline ``deadline`` (monotonic
    seconds; ``None`` for none). For tests and for code that starts work outside gRPC."""

    __slots__ = ("_deadline", "_token")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> None:
        self._token = _deadline.set(self._deadline)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _deadline.reset(self._token)


class DeadlineInterceptor(WrappingInterceptor):
    """Admission control and deadline propagation; see the module docstring.

    Args:
        min_remaining_s: calls with less time left than this are refused with
            ``DEADLINE_EXCEEDED`` before the handler runs (default 0.0: only expired ones).

    Raises:
        ConfigError: ``min_remaining_s < 0`` (quoted).
    """

    def __init__(self, *, min_remaining_s: float = 0.0) -> None:
        if not min_remaining_s >= 0:
            raise ConfigError(f"min_remaining_s must be >= 0, got {min_remaining_s!r}")
        super().__init__()
        self._min = min_remaining_s
        self.rejected = 0

    def _before_for(self, method: str) -> Before:
        return self._admit

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # Each call runs in its own task, so the context variable set here is the
        # handler's and disappears with the call.
        remaining = context.time_remaining()
        if remaining is None or remaining > _NO_DEADLINE_S:
            _deadline.set(None)
            return
        if remaining <= self._min:
            self.rejected += 1
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "deadline exceeded before the handler ran")
        _deadline.set(time.monotonic() + remaining)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineOptions:
    """Server deadline admission and propagation, for ``ServeOptions(deadline=...)`` (on by
    default): calls whose deadline has passed (or leaves less than ``min_remaining_s``) are
    refused with ``DEADLINE_EXCEEDED`` before the handler runs, and the remaining time
    bounds the handler's outgoing mesh calls (:func:`current_deadline`).

    Args:
        min_remaining_s: refuse calls with less time left than this, seconds (default 0.0:
            only calls whose deadline already passed).

    Raises:
        ConfigError: ``min_remaining_s < 0`` (quoted).
    """

    min_remaining_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.min_remaining_s >= 0:
            raise ConfigError(f"min_remaining_s must be >= 0, got {self.min_remaining_s!r}")

    def interceptor(self) -> DeadlineInterceptor:
        """A :class:`DeadlineInterceptor` with these options."""
        return DeadlineInterceptor(min_remaining_s=self.min_remaining_s)
