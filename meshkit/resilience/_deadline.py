"""Deadline propagation and admission control on the server side.

:class:`DeadlineInterceptor` (a ``grpc.aio.ServerInterceptor``) does two things per call:

* **admission** (Finagle's ``DeadlineFilter``): a call whose deadline has already passed
  (or has less than ``min_remaining_s`` left) is answered ``DEADLINE_EXCEEDED`` before the
  handler runs;
* **propagation**: while the handler runs, :func:`current_deadline` returns the call's
  absolute deadline (``time.monotonic()`` seconds), and every :func:`meshkit.dial` channel
  runs outgoing calls under ``min(own timeout, remaining - margin)``, never longer: a
  propagated one's timeout is handed to grpc lowered to grpc core's ``grpc-timeout`` grid
  (:func:`wire_timeout_s`), which core would otherwise round up by up to 1 % at each hop.

The wire allows deadlines far beyond what a process can compute with:
``grpc-timeout: 99999999H`` (8 digits, unit hours; gRPC over HTTP/2 spec) is about 11400
years, and grpcio fails an outgoing call at once with ``DEADLINE_EXCEEDED`` when its
timeout reaches about 9.2e9 s (int64 nanoseconds). So the remaining time a server reads
is clamped to :data:`MAX_PROPAGATED_S` (one day) before it is propagated: read it with
:func:`time_remaining_s` rather than ``context.time_remaining()`` when passing it on as
a ``timeout``.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from meshkit._config import check_number
from meshkit._handlers import Before, WrappingInterceptor
from meshkit._methods import HEALTH_METHODS
from meshkit.errors import ConfigError

__all__ = [
    "MAX_PROPAGATED_S",
    "DeadlineInterceptor",
    "DeadlineOptions",
    "clamp_timeout_s",
    "current_deadline",
    "deadline_scope",
    "time_remaining_s",
]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshkit_deadline", default=None
)
MAX_PROPAGATED_S = 86_400.0
"""The longest remaining time propagated or passed on, seconds (one day): longer than any
call a mesh should keep open, and far below where grpcio's deadline arithmetic overflows
(about 9.2e9 s)."""


WIRE_CLOCK_S = 0.005
"""What :func:`wire_timeout_s` takes off beyond grpc core's grid, seconds: core reads a
call's deadline and its clock in whole milliseconds (rounding the deadline up), and its
clock reading may be a little old when it sends, so the timeout it encodes can exceed the
one grpcio was handed by a millisecond or more (5 ms leaves room on a loaded machine)."""


def wire_unit_s(timeout_s: float) -> float:
    """The unit grpc core rounds a ``grpc-timeout`` of ``timeout_s`` seconds up to when it
    sends it (``Timeout::FromMillis``: three digits of milliseconds, then of tens and
    hundreds of milliseconds, seconds, tens and hundreds of seconds; minutes past 1e5 s):
    1 ms below 1 s, then 1 % of the decade the value is in, at most."""
    if timeout_s < 1.0:
        return 0.001
    if timeout_s < 10.0:
        return 0.01
    if timeout_s < 100.0:
        return 0.1
    if timeout_s < 1_000.0:
        return 1.0
    if timeout_s < 10_000.0:
        return 10.0
    if timeout_s < 100_000.0:
        return 100.0
    return 600.0


def wire_timeout_s(timeout_s: float) -> float:
    """``timeout_s`` (seconds, > 0) lowered so that the ``grpc-timeout`` grpc core sends
    for it is not above it: down to grpc core's grid (:func:`wire_unit_s`) less
    :data:`WIRE_CLOCK_S`, or ``timeout_s`` itself when that leaves nothing (under about
    6 ms). grpc core rounds the timeout it sends up to its grid (a timeout of 30 s leaves
    as ``301`` hundreds of milliseconds: its clock is read in whole milliseconds), so a
    remaining time passed on as it is reaches the next hop up to 1 % longer, again at
    each hop; a mesh channel hands grpc this for a call under a propagated deadline, the
    call's own timer firing at most one unit and 5 ms early."""
    unit = wire_unit_s(timeout_s)
    lowered = math.floor(timeout_s / unit) * unit - WIRE_CLOCK_S
    return lowered if lowered > 0.0 else timeout_s


def wire_cut_s(timeout_s: float) -> float:
    """The most :func:`wire_timeout_s` takes off a timeout of ``timeout_s`` seconds (or of
    less), seconds: how early a call's own timer may fire before its deadline."""
    return wire_unit_s(timeout_s) + WIRE_CLOCK_S


def clamp_timeout_s(timeout_s: float | None) -> float | None:
    """``timeout_s`` (seconds, or ``None`` for none) clamped to :data:`MAX_PROPAGATED_S`
    (``inf`` and values past it become ``MAX_PROPAGATED_S``). NaN (a computed timeout gone
    wrong) is a deadline already passed, ``0.0``: grpc.aio fails a call with
    ``timeout=nan`` at once with ``DEADLINE_EXCEEDED``, and reading it as none would lift
    every bound on the call (the channel's default timeout included)."""
    if timeout_s is None:
        return None
    if timeout_s != timeout_s:
        return 0.0
    return timeout_s if timeout_s <= MAX_PROPAGATED_S else MAX_PROPAGATED_S


def time_remaining_s(context: Any) -> float | None:
    """Seconds left before the deadline of the call ``context`` (a
    ``grpc.aio.ServicerContext``) belongs to, clamped to :data:`MAX_PROPAGATED_S`, or
    ``None`` when the caller set no deadline. Use it instead of ``context.time_remaining()``
    for a ``timeout`` passed on to another call: a legal ``grpc-timeout: 9999999H`` reads
    as 3.6e10 s, which grpcio fails at once with ``DEADLINE_EXCEEDED``."""
    return clamp_timeout_s(context.time_remaining())


def current_deadline() -> float | None:
    """The deadline of the call being handled, as ``time.monotonic()`` seconds, or ``None``
    outside a handler or when the caller set no deadline; at most
    :data:`MAX_PROPAGATED_S` ahead (a longer one is clamped)."""
    return _deadline.get()


# the deadlines that deadline_scope blocks replaced, innermost last, per context
_outer: contextvars.ContextVar[tuple[float | None, ...]] = contextvars.ContextVar(
    "meshkit_deadline_outer", default=())


def handled_deadline() -> float | None:
    """The deadline of the call being handled as its server admitted it
    (``time.monotonic()`` seconds, or ``None``): :func:`current_deadline` before any
    :class:`deadline_scope` the handler entered (a shorter one of the handler's own is
    not its caller's). Read on a call's error path only (``meshkit._calls``), to tell a
    downstream call under the caller's deadline, propagated, from one under a deadline
    of the handler's own."""
    outer = _outer.get()
    return outer[0] if outer else _deadline.get()


class deadline_scope:
    """Run a block as if handling a call with absolute deadline ``deadline`` (monotonic
    seconds; ``None`` for none; NaN, a deadline computed wrong, adds none of its own).
    For tests, for code that starts work outside gRPC, and inside a handler to give its
    outgoing calls a shorter deadline. A deadline more than :data:`MAX_PROPAGATED_S`
    ahead when the block is entered (``inf`` included) is clamped to that, as a
    propagated one: grpcio fails a call whose timeout is past its range at once with
    ``DEADLINE_EXCEEDED``, unsent.

    Entered where a deadline is already in force (a handler's, propagated; an outer
    scope's), a later ``deadline`` does not extend it: the block runs under the earlier
    of the two, as grpc-go's ``context.WithDeadline`` of a context whose deadline is
    earlier (a handler's ``deadline_scope(time.monotonic() + 5.0)`` with 0.5 s left
    sends its calls 0.5 s, not 5 s the caller will never wait for). ``None`` lifts it:
    the block runs without a deadline, for work meant to outlive the call (a scope nested
    in that one sets its own). NaN keeps it as it is (none outside a handler or scope):
    a deadline computed wrong lifts no bound, as :func:`clamp_timeout_s` reads a NaN
    timeout as passed rather than as none.

    One scope object may be entered by concurrent tasks and nested in itself: each
    ``with`` puts back the deadline its own task had before it (kept per context, not on
    the object).

    Raises:
        ConfigError: ``deadline`` is neither ``None`` nor a number (a ``bool``, a string:
            quoted); ``True`` would read as the monotonic time 1, a deadline long passed.
    """

    __slots__ = ("_deadline",)

    def __init__(self, deadline: float | None) -> None:
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, (int, float))):
            raise ConfigError(f"deadline must be time.monotonic() seconds or None, "
                              f"got {deadline!r}")
        self._deadline = deadline

    def __enter__(self) -> None:
        _outer.set((*_outer.get(), _deadline.get()))
        deadline = self._deadline
        if deadline is not None:
            inherited = _deadline.get()
            if deadline != deadline:  # NaN: none of its own, the one in force kept
                deadline = inherited
            else:
                deadline = min(deadline, time.monotonic() + MAX_PROPAGATED_S)
                if inherited is not None and inherited < deadline:  # never extended
                    deadline = inherited
        _deadline.set(deadline)

    def __exit__(self, *exc: object) -> None:
        outer = _outer.get()
        _outer.set(outer[:-1])
        _deadline.set(outer[-1] if outer else None)



ADMISSION_REFUSAL_DETAILS = "deadline exceeded before the handler ran"
"""Details of a call :class:`DeadlineInterceptor` refused (``DEADLINE_EXCEEDED``)."""

ADMISSION_REFUSAL_METADATA = ("meshkit-deadline-refused", "1")
"""Trailing metadata of a call :class:`DeadlineInterceptor` refused, and of a meshkit
server's answer to a handler that let such a refusal of its own call escape
(:data:`DOWNSTREAM_REFUSAL_DETAILS`): with either details, a mesh client reports the
attempt to its balancer as no endpoint's outcome (:func:`admission_refusal`)."""

QUEUED_REFUSAL_DETAILS = "deadline exceeded while the call waited at the server"
"""Details of a call :class:`DeadlineInterceptor` refused (``DEADLINE_EXCEEDED``, without
:data:`ADMISSION_REFUSAL_METADATA`) because less than ``min_remaining_s`` was left after
it waited in the server's request gate (``meshkit._limits.RequestGate``: a read permit,
``ServerLimits.max_concurrent_reads``) though it had that much when it came: the
server's own delay, which mesh clients count as the endpoint's outcome."""

gate_arrival: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "meshkit_gate_arrival", default=None)
"""``time.monotonic()`` of the arrival of the call being handled, set by the request gate
only for a call that waited there for a read permit (so no call that did not wait pays
for it); read by :class:`DeadlineInterceptor` when it refuses a call."""

DOWNSTREAM_REFUSAL_DETAILS = "deadline exceeded (too short for a call the handler made under it)"
"""Details of a meshkit server's ``DEADLINE_EXCEEDED`` answer to a handler that let an
admission refusal of its own call escape, that call having run under this call's
deadline, propagated (``meshkit._unhandled``); sent with
:data:`ADMISSION_REFUSAL_METADATA`, so the hop above reads it as the same refusal, and a
chain of any length answers its first caller so."""


def admission_refusal(details: str | None, trailing_metadata: Any) -> bool:
    """Whether a ``DEADLINE_EXCEEDED`` with ``details`` and ``trailing_metadata`` is a
    meshkit server's admission refusal (:data:`ADMISSION_REFUSAL_DETAILS`: the request
    came with less time left than the server's ``min_remaining_s``, and nothing of it
    ran), or a meshkit server's answer to one further down the chain, of a call its
    handler made under the propagated deadline (:data:`DOWNSTREAM_REFUSAL_DETAILS`). That
    says nothing about the endpoint (the request's deadline was short), so the channel
    does not count it against the endpoint for outlier ejection
    (``OutlierOptions.failure_codes``) nor as a P2C latency sample, as it does not a
    nack. Both the exact details and the trailer (:data:`ADMISSION_REFUSAL_METADATA`) are
    needed: a handler that forwards a downstream status verbatim without the trailer is
    counted as usual. A meshkit server whose handler lets such a refusal of one of its
    calls escape answers its own caller ``DEADLINE_EXCEEDED``
    :data:`DOWNSTREAM_REFUSAL_DETAILS` with the trailer when that caller set a deadline
    and the refused call ran under it (propagated by a mesh channel, or a call of another
    channel: meshkit cannot tell), else ``UNKNOWN`` (``meshkit._unhandled``).
    Asked on the failure path only."""
    return details in (ADMISSION_REFUSAL_DETAILS, DOWNSTREAM_REFUSAL_DETAILS) \
        and bool(trailing_metadata) and any(
            tuple(item) == ADMISSION_REFUSAL_METADATA for item in trailing_metadata)


class DeadlineInterceptor(WrappingInterceptor):
    """Admission control and deadline propagation; see the module docstring.

    Args:
        min_remaining_s: calls with less time left than this are refused with
            ``DEADLINE_EXCEEDED`` before the handler runs (details
            :data:`ADMISSION_REFUSAL_DETAILS`, trailer :data:`ADMISSION_REFUSAL_METADATA`:
            mesh clients count it against no endpoint); a call with exactly this much
            left is admitted (default 0.0: only expired ones, which grpc reads as 0 left).
            ``grpc.health.v1`` checks (``Check``, ``Watch``, ``List``; not another name
            under that path) are refused only once their deadline has passed:
            they do no work this bound is for, and probes' deadlines are short
            (Kubernetes' gRPC probe: 1 s by default). A call that came with enough
            time left but lost it waiting in the server's request gate for a read
            permit is refused ``DEADLINE_EXCEEDED`` :data:`QUEUED_REFUSAL_DETAILS`
            without the trailer: the server's delay, not the request's (mesh clients
            count it as the endpoint's outcome).

    Raises:
        ConfigError: ``min_remaining_s`` is not a finite number of seconds >= 0 (as
            :class:`DeadlineOptions`; quoted).
    """

    def __init__(self, *, min_remaining_s: float = 0.0) -> None:
        check_number("min_remaining_s", min_remaining_s)
        super().__init__()
        # one comparison per call, `remaining <= _refuse_at`: the largest float below
        # min_remaining_s (remaining < min_remaining_s), but at least 0, as grpc reads a
        # passed deadline as 0 left, never less
        self._refuse_at = max(math.nextafter(min_remaining_s, -math.inf), 0.0)
        self.rejected = 0

    def _before_for(self, method: str) -> Before:
        # probes, admitted while their deadline lasts: the health service's methods, not
        # any name under its path (a catch-all handler's, which a caller picks)
        if method in HEALTH_METHODS and self._refuse_at > 0.0:
            return self._admit_probe
        return self._admit

    def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> Awaitable[None] | None:
        # Each call runs in its own task, so the context variable set here is the
        # handler's and disappears with the call. Synchronous (no coroutine per call):
        # a refusal is the abort, which the handler wrap awaits.
        remaining = context.time_remaining()  # time_remaining_s, inline
        if remaining is None:
            _deadline.set(None)
            return None
        if not remaining <= MAX_PROPAGATED_S:  # NaN or past it, rare: clamped (no frame else)
            remaining = cast(float, clamp_timeout_s(remaining))
        if remaining <= self._refuse_at:
            return self._refuse(context, remaining, self._refuse_at)
        _deadline.set(time.monotonic() + remaining)
        return None

    def _admit_probe(self, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> Awaitable[None] | None:
        # _admit for a grpc.health.v1 check: it does no work min_remaining_s could be
        # for, and its callers' deadlines are short (Kubernetes' gRPC probe: 1 s by
        # default), so only a passed deadline (read as 0 left) is refused
        remaining = time_remaining_s(context)
        if remaining is None:
            _deadline.set(None)
            return None
        if remaining <= 0.0:
            return self._refuse(context, remaining, 0.0)
        _deadline.set(time.monotonic() + remaining)
        return None

    def _refuse(self, context: grpc.aio.ServicerContext[Any, Any], remaining: float,
                refuse_at: float) -> Awaitable[None]:
        """Refuse the call with ``remaining`` seconds left (at most ``refuse_at``, the
        bound it was refused by)."""
        self.rejected += 1
        arrived = gate_arrival.get()
        if arrived is not None and \
                remaining + (time.monotonic() - arrived) > refuse_at:
            # enough time when it came, spent in the server's request gate: not the
            # request's deadline but the server's delay (no admission trailer)
            queued: Awaitable[None] = context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, QUEUED_REFUSAL_DETAILS)
            return queued
        aborted: Awaitable[None] = context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, ADMISSION_REFUSAL_DETAILS,
            (ADMISSION_REFUSAL_METADATA,))
        return aborted


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineOptions:
    """Server deadline admission and propagation, for ``ServeOptions(deadline=...)`` (on by
    default): calls whose deadline has passed (or leaves less than ``min_remaining_s``) are
    refused with ``DEADLINE_EXCEEDED`` before the handler runs, and the remaining time
    bounds the handler's outgoing mesh calls (:func:`current_deadline`).

    Args:
        min_remaining_s: refuse calls with less time left than this, seconds; a call
            with exactly this much left is admitted (default 0.0: only calls whose
            deadline already passed); ``grpc.health.v1`` checks (``Check``, ``Watch``,
            ``List``) only once their
            deadline has passed (a probe's is short: Kubernetes' 1 s by default). A
            meshkit server calling this one under its own caller's deadline, whose
            handler lets the refusal escape, answers that caller ``DEADLINE_EXCEEDED``
            (:func:`admission_refusal`).

    Raises:
        ConfigError: ``min_remaining_s`` is not a finite number of seconds >= 0 (quoted).
    """

    min_remaining_s: float = 0.0

    def __post_init__(self) -> None:
        check_number("min_remaining_s", self.min_remaining_s)

    def interceptor(self) -> DeadlineInterceptor:
        """A :class:`DeadlineInterceptor` with these options."""
        return DeadlineInterceptor(min_remaining_s=self.min_remaining_s)
