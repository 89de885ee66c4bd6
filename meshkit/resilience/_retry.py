"""Retries and hedging as a per-call client interceptor, bounded by a retry budget.

Rules (gRFC A6 "gRPC Retry Design", Finagle/Linkerd retry budgets):

* only statuses in ``retryable_codes`` are retried (default ``UNAVAILABLE`` only);
* at most ``max_attempts`` attempts in all; each retry prefers an endpoint not tried yet;
* the delay is exponential with full jitter (:class:`~meshkit.resilience.Backoff`), unless
  the server pushed back: ``retry-after`` (seconds or an HTTP-date, RFC 9110 §10.2.3) or
  ``grpc-retry-pushback-ms`` (gRFC A6; a negative, malformed or past-32-bit value means
  "do not retry");
* a retry never sleeps past the deadline and is not started when the time left after the
  delay is shorter than the method's typical latency (an EWMA of its successful
  attempts, each timed from its launch on an endpoint: a wait for one is not counted),
  nor once the deadline has passed (a loaded loop woke it late): the call ends with the
  last attempt's error;
* every retry and hedge withdraws from the shared :class:`~meshkit.resilience.RetryBudget`;
  when it is spent the last error is returned;
* a call a server's deadline admission refused (``DeadlineOptions.min_remaining_s``) is
  not retried, even where ``DEADLINE_EXCEEDED`` is retryable: a later attempt would have
  less time left;
* nor is a message over a size limit (:func:`size_refusal`: ``RESOURCE_EXHAUSTED``
  "... message larger than max", a request over the client's send or the server's
  receive limit, a response over the client's receive limit, a gzip message inflating
  past one), nor metadata over ``grpc.max_metadata_size``'s hard limit ("received
  metadata size exceeds hard limit ..."), even where ``RESOURCE_EXHAUSTED`` is
  retryable: every attempt sends the same request and gets the same refusal (a
  response's handler run again each time); nor hedged on (it ends a hedged call as any
  fatal status). Over its soft limit ("... soft limit ...") grpc core refuses at random,
  a fresh draw per call: retried as the policy says;
* a call is retried only if it is safe to repeat: the policy says the method is
  ``idempotent``, or the request carries an idempotency key (the ``idempotency-key``
  metadata, or a non-empty ``idempotency_field`` attribute on the request message), or the
  attempt never reached a server (no endpoint could be picked);
* **hedging** (idempotent methods with ``hedge_delay_s``): when an attempt has not answered
  after ``hedge_delay_s``, another goes to a different endpoint; the first success wins
  and the others are cancelled. An attempt that fails with a retryable status or a nack
  has the next one sent at once, or after its pushback (gRFC A6 "Pushback": a negative,
  malformed or too long pushback sends no more); one that found no endpoint (every
  endpoint failing) after the policy's backoff, as a retry would wait; one a server's
  deadline admission refused (``DeadlineOptions.min_remaining_s``: none of it ran) sends
  no more, the attempts in flight still answering; any other status ends the call. As a
  retry, a hedge is not sent when the time left is shorter than the method's typical
  latency (counted in ``gave_up_deadline``): it could not answer in time.
  C-core gRPC lacks hedging (grpc/grpc#26566).

Unary-response calls (unary-unary, stream-unary with a re-iterable request: a list, a
tuple, an iterable making a new iterator each time) are retried and hedged whole; a
stream-unary call whose request is an iterator or a generator (the first attempt spends
it) is retried only when no attempt reached a server, and never hedged. After a server's
pushback the backoff starts again from its first step (gRFC A6, "Summary of Retry and
Hedging Logic" 5.1). Streaming-response calls follow gRFC A6's commit rule:

* **unary-stream** calls that are safe to repeat are retried until they are *committed*,
  which meshkit defines as the first response message (or the clean end of the stream)
  reaching the call object: a stream that fails with a retryable status before it has
  delivered anything is opened again on another endpoint, under the same budget, backoff,
  pushback and deadline rules; once a message has been delivered, a later error is the
  caller's. (gRFC A6 commits at the response headers; meshkit holds the decision until the
  first message, which is no later for the caller, since it has nothing to act on before
  then, and also covers servers that send headers and then fail.) A caller that asks for
  the headers (``initial_metadata()``) acts on them: it gets the headers of the attempt
  in flight as soon as they arrive, and the call commits to that attempt then, as
  grpc-go's ``ClientStream.Header()``.
  Hedging does not apply to streams: a hedged policy retries them instead;
* **stream-stream** calls are not retried once opened (their request iterator is
  consumed as it is sent);
* every kind is retried when the attempt never reached a server (no endpoint could be
  picked: :class:`~meshkit.errors.NoEndpointsError`), since nothing was sent, whatever
  the policy's ``retryable_codes`` (a hedged call's next attempt too), except
  when the registry gave no first answer within the call's wait for it
  (``resolve_timeout_s``; ``NoEndpointsError.unresolved``): a retry would only wait again;
  so is a unary-response attempt that grpc failed because its endpoint's sub-channel
  could not connect (:class:`ConnectFailedError`, see :func:`never_connected`: the
  request never left), a stream-unary call whose request is an iterator (a generator,
  its ``write()`` messages) too: the few messages such an attempt took (one) are kept
  and given first to the next attempt (:class:`_UnsentKept`); not one whose attempt
  took more than :data:`_KEPT_MAX` (it sent some);
* a **nack** is retried like ``UNAVAILABLE`` and whether or not the call is safe to repeat
  (for unary-stream calls: only those safe to repeat, which are wrapped for their retries
  anyway; the wrapper costs every other stream a task and about 74 bytecodes per message):
  a meshkit server that refuses a call before any of its code ran says so with the
  trailing metadata ``meshkit-nack: 1`` (``RESOURCE_EXHAUSTED`` "server busy" when it
  sheds it, :class:`meshkit.server.ServerLimits`; ``UNAVAILABLE``
  :data:`DRAINING_DETAILS` while it drains, :meth:`meshkit.server.MeshServer.drain`), so
  the call goes to another endpoint, within the budget (Finagle's restartable failures,
  its ``RequeueFilter``).
* a unary-stream call retried until its commit (safe to repeat) whose attempt a server
  refused ``UNIMPLEMENTED`` as a method it does not serve (:func:`not_served`: grpc's
  own unknown-method answer, none of it ran; a wrong server at a stale registry entry's
  address) is opened once more, on another endpoint, whatever the policy's
  ``retryable_codes``, as the channel sends a unary call so refused on; a second such
  refusal ends the call ``UNIMPLEMENTED`` (a method no endpoint serves);
* where the method's policy retries nothing (``None``, or ``max_attempts=1``), a
  unary-response call refused before any of it ran (a nack, an attempt a draining server
  cut, :func:`cut_before_it_ran`) or whose request never left
  (:class:`ConnectFailedError`) is still sent once more, at once, within the budget (gRFC
  A6 "Transparent Retries": "the client library will immediately retry it once"): the
  servers refuse such calls because mesh clients move them on.

A call a server ends ``CANCELLED`` is not retried, even when no code of it ran: grpc
core ends the calls a server accepted but had not yet handed to its application when it
stops (``grpc.aio``'s ``server.stop()``, grpc/grpc#41785) with the same trailers-only
``CANCELLED`` "CANCELLED" that a handler's ``context.abort(grpc.StatusCode.CANCELLED,
"CANCELLED")`` sends, so a client cannot tell the one (safe to repeat) from the other. A
meshkit server refuses mesh clients' new calls with a nack before it stops instead (see
:meth:`meshkit.server.MeshServer.drain`; it knows them by the ``meshkit/`` token of their
user agent, :data:`meshkit._metadata.MESH_USER_AGENT`). One exception, where the client
can tell: a unary-response attempt (not the health service's) ended ``CANCELLED``
"CANCELLED" by an endpoint that had already refused a call of this channel as draining
(:func:`draining_refusal`) before the attempt started, over the same connection
(:func:`cut_before_it_ran`): that server refuses every such call from its refusal phase
on, so none of this one ran (grpc core cut it at the stop while it waited for the
server's application, which a loaded server's loop had not come to); it is retried like
a nack, whatever the method (within ``max_attempts``, the budget and the deadline). A
hedged call applies the same rule to each attempt, by that attempt's own endpoint and
start (hedges run side by side): such an attempt is non-fatal, as a nack, and the next
hedge goes at once; a hedge launched before the refusal was seen may have run, and its
``CANCELLED`` ends the call as any fatal status does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import grpc
from grpc.aio import AioRpcError, Metadata

from meshkit._calls import RetryingStreamCall
from meshkit._config import (
    check_bool,
    check_instance,
    check_int,
    check_metadata_key,
    check_number,
    check_status_codes,
)
from meshkit._fields import FrozenMap, Normalised
from meshkit._metadata import with_previous_attempts
from meshkit._methods import MAX_CACHED_METHODS, MethodMatcher
from meshkit.errors import ConfigError, InvalidCallError, MeshRpcError, NoEndpointsError
from meshkit.interceptors import (
    CallKind,
    ClientCallDetails,
    ClientInterceptor,
    StreamProceed,
    UnaryProceed,
)
from meshkit.resilience._backoff import Backoff
from meshkit.resilience._budget import BudgetOptions, RetryBudget
from meshkit.resilience._deadline import admission_refusal

__all__ = ["RetryInterceptor", "RetryOptions", "RetryPolicy", "RetryStats"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_monotonic = time.monotonic
_time_ns = time.time_ns
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How one method is retried.

    Args:
        max_attempts: attempts in all, first included, >= 1 (default 3; 1 disables,
            but for the one transparent retry of a call refused before any of it ran,
            see the module docstring).
            Not capped at 5 as gRFC A6 caps a service config's ``maxAttempts`` (a cap
            that guards a client against the config a server sends; this is the
            client's own): the retry budget bounds what retries add to the load.
        retryable_codes: statuses worth another attempt, any collection of
            ``grpc.StatusCode`` (default ``{UNAVAILABLE}``); stored as a frozenset.
            ``RESOURCE_EXHAUSTED`` here retries a server's quota or overload refusal,
            never a message or metadata over a size limit (``size_refusal``: the same
            request gets the same refusal; metadata over the soft limit, refused at
            random, is retried).
        backoff: delay between attempts (default :class:`Backoff` 25 ms doubling to 1 s).
        idempotent: the method may run twice safely (reads); enables retries of any
            retryable status and hedging (default ``False``).
        idempotency_metadata_key: metadata key whose presence makes a call safe to retry
            (default ``"idempotency-key"``).
        idempotency_field: request attribute whose non-empty value makes a call safe to
            retry (default ``"idempotency_key"``), an identifier (a protobuf field's
            name); ``None`` to ignore requests.
        hedge_delay_s: send another attempt after this many seconds without an answer,
            >= 0 (0: all ``max_attempts`` at once, each to its own endpoint while there
            are enough, as gRFC A6's ``hedgingDelay`` "0s"; idempotent methods only;
            default ``None``: no hedging); a hedged attempt
            that fails with a retryable status or a nack has the next one sent at once,
            or after its pushback (gRFC A6).
        max_pushback_s: longest server pushback honoured, seconds; longer means give up
            (no more retries or hedges; default 10.0).

    Raises:
        ConfigError: a value out of range or of the wrong type (``True`` for a number, a
            string for ``retryable_codes``, a status name or number instead of a
            ``grpc.StatusCode``, a number of seconds for ``backoff``), ``hedge_delay_s``
            without ``idempotent=True`` or with ``max_attempts=1``, or an
            ``idempotency_metadata_key`` that is not a lowercase text-metadata key, an
            ``idempotency_field`` that is no identifier (``""``, ``"idempotency-key"``,
            bytes; quoted).
    """

    max_attempts: int = 3
    retryable_codes: Normalised[Collection[grpc.StatusCode], frozenset[grpc.StatusCode]] = (
        Normalised(frozenset({_UNAVAILABLE})))  # noqa: RUF009 - immutable: _fields.py
    backoff: Backoff = field(default_factory=Backoff)
    idempotent: bool = False
    idempotency_metadata_key: str = "idempotency-key"
    idempotency_field: str | None = "idempotency_key"
    hedge_delay_s: float | None = None
    max_pushback_s: float = 10.0

    def __post_init__(self) -> None:
        check_bool("idempotent", self.idempotent)  # "false" would replay unsafe calls
        check_int("max_attempts", self.max_attempts)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(f"backoff must be a Backoff, got {self.backoff!r}")
        object.__setattr__(self, "retryable_codes",
                           check_status_codes("retryable_codes", self.retryable_codes))
        if grpc.StatusCode.OK in self.retryable_codes:
            raise ConfigError("retryable_codes must not contain OK")
        check_metadata_key("idempotency_metadata_key", self.idempotency_metadata_key)
        field_name = self.idempotency_field
        if field_name is not None and not (isinstance(field_name, str)
                                           and field_name.isidentifier()):
            raise ConfigError(f"idempotency_field must be the name of a request attribute "
                              f"(a Python identifier such as 'idempotency_key') or None, "
                              f"got {field_name!r}")
        if self.hedge_delay_s is not None:
            # gRFC A6: a hedgingDelay of "0s" sends every attempt at once
            check_number("hedge_delay_s", self.hedge_delay_s, finite=False)
            if not self.idempotent:
                raise ConfigError("hedge_delay_s needs idempotent=True: hedging runs a call "
                                  "more than once")
            if self.max_attempts < 2:  # gRFC A6: a hedgingPolicy's maxAttempts is > 1
                raise ConfigError(f"hedge_delay_s needs max_attempts >= 2 (one attempt "
                                  f"sends no hedge), got max_attempts={self.max_attempts!r}")
        check_number("max_pushback_s", self.max_pushback_s, finite=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryOptions:
    """Retry policies per method, and the budget they share.

    Args:
        default: policy of methods no pattern names (default ``RetryPolicy()``: retries
            ``UNAVAILABLE`` only for calls safe to repeat); ``None`` disables by default
            (a policy of ``None`` still sends a call refused before any of it ran once
            more: gRFC A6's transparent retry, see the module docstring).
        methods: ``{method pattern: policy or None}``, e.g. ``"/pkg.Svc/Method"``,
            ``"Svc/Method"``, ``"OrderService/Get*"``, ``"*"``; an exact pattern wins, then
            the longest glob (:mod:`meshkit._methods`).
        budget: :class:`BudgetOptions` (Finagle defaults: 20 %, 10/s, 10 s window).

    ``methods`` is stored as a read-only copy (a :class:`~meshkit._fields.FrozenMap`: a
    dict changed later does not change the options, which still pickle and deep-copy).

    Raises:
        ConfigError: a bad pattern or policy: ``default`` or a value of ``methods`` that
            is neither a :class:`RetryPolicy` nor ``None``, a ``budget`` that is no
            :class:`BudgetOptions` (quoted).
    """

    default: RetryPolicy | None = field(default_factory=RetryPolicy)
    methods: Mapping[str, RetryPolicy | None] = field(default_factory=dict)
    budget: BudgetOptions = field(default_factory=BudgetOptions)

    def __post_init__(self) -> None:
        MethodMatcher(self.methods, self.default, where="RetryOptions.methods")  # validates now
        # a read-only copy: the caller's dict changed later must not change the options
        methods = FrozenMap(self.methods)
        object.__setattr__(self, "methods", methods)
        if self.default is not None and not isinstance(self.default, RetryPolicy):
            raise ConfigError(f"default must be a RetryPolicy or None, got {self.default!r}")
        for pattern, policy in self.methods.items():
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise ConfigError(f"methods[{pattern!r}] must be a RetryPolicy or None, "
                                  f"got {policy!r}")
        if not isinstance(self.budget, BudgetOptions):
            raise ConfigError(f"budget must be a BudgetOptions, got {self.budget!r}")


@dataclass(slots=True)
class RetryStats:
    """Counters of a :class:`RetryInterceptor` (cumulative): ``calls`` seen; ``retries``
    and ``hedges`` granted (each spent a retry-budget token: counted before the backoff,
    sent or not; one that finds no endpoint, or whose channel closes meanwhile, sends
    nothing); ``budget_exhausted``: retries or hedges the budget refused;
    ``gave_up_deadline``: retries and hedges not sent because the deadline was too close
    (past, or nearer than the method's typical latency)."""

    calls: int = 0
    retries: int = 0
    hedges: int = 0
    budget_exhausted: int = 0
    gave_up_deadline: int = 0


class HedgedAttempts(list[Any]):
    """``ClientCallDetails.attempts`` of a hedged call: the endpoints tried, in order (a
    list, as for any call), and :attr:`answered`, the endpoint of the attempt the call
    settled on (the one that answered, or whose error ended the call; ``None`` when
    that attempt found no endpoint). Attempts run side by side, so the last endpoint
    tried is not the one that answered; telemetry names this one (``peer``,
    ``network.peer.*``, ``meshkit.instance_id``). Each endpoint is filed under the task
    of the attempt that appended it (the channel does, in that attempt's task).

    As a balancer's ``exclude`` it also holds the endpoints that attempts of the call are
    waiting on (picked while still connecting, not yet launched on: :meth:`wait_on`), so
    that a hedge picked again when another endpoint connects does not take the one a
    sibling attempt is about to be sent on; ``len()``, indexing and iteration give the
    endpoints tried only."""

    __slots__ = ("_by_task", "_index", "_waiting", "answered")

    def __init__(self, items: Collection[Any] = ()) -> None:
        super().__init__(items)
        self.answered: Any = None
        self._by_task: dict[asyncio.Task[Any], Any] = {}
        self._index: dict[asyncio.Task[Any], int] = {}  # its place in the lists
        self._waiting: dict[Any, int] = {}  # endpoint -> attempts waiting on it

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._waiting or list.__contains__(self, endpoint)

    def __bool__(self) -> bool:
        return bool(self._waiting) or len(self) > 0

    def wait_on(self, endpoint: Any) -> None:
        """An attempt of the call waits for ``endpoint``'s connection: excluded from its
        siblings' picks until :meth:`stop_waiting` (the pool calls both)."""
        self._waiting[endpoint] = self._waiting.get(endpoint, 0) + 1

    def stop_waiting(self, endpoint: Any) -> None:
        """An attempt no longer waits for ``endpoint`` (launched on it, picked again, or
        ended)."""
        n = self._waiting.get(endpoint, 0) - 1
        if n > 0:
            self._waiting[endpoint] = n
        else:
            self._waiting.pop(endpoint, None)

    def append(self, endpoint: Any) -> None:
        """Add ``endpoint``, tried by the attempt running in the current task."""
        task = asyncio.current_task()
        if task is not None:
            self._by_task[task] = endpoint
            self._index[task] = len(self)
        super().append(endpoint)

    def launched(self, task: asyncio.Task[Any]) -> tuple[Any, int] | None:
        """The endpoint the attempt run by ``task`` was launched on and its index in
        the call's attempts (and ``attempt_started_ns``), or ``None`` when it launched
        none (it found no endpoint)."""
        index = self._index.get(task)
        return None if index is None else (self._by_task[task], index)

    def settle(self, task: asyncio.Task[Any]) -> None:
        """The call settles on the attempt run by ``task``: :attr:`answered` is its
        endpoint (``None`` if it appended none); the tasks are let go."""
        self.answered = self._by_task.get(task)
        self._by_task.clear()
        self._index.clear()


class RetryInterceptor(ClientInterceptor):
    """Retries and hedging; see the module docstring. Install it with
    ``DialOptions(retry=RetryOptions(...))`` (innermost per-call interceptor).

    Args:
        options: :class:`RetryOptions` (default ``RetryOptions()``).
        budget: share a :class:`RetryBudget` between channels (default: its own).

    Raises:
        ConfigError: ``options`` is no :class:`RetryOptions` or ``budget`` no
            :class:`RetryBudget` (``BudgetOptions`` belong in ``RetryOptions.budget``;
            quoted).
    """

    def __init__(self, options: RetryOptions | None = None, *,
                 budget: RetryBudget | None = None) -> None:
        check_instance("options", options, RetryOptions)
        check_instance("budget", budget, RetryBudget)
        self.options = options or RetryOptions()
        self.budget = budget or RetryBudget(self.options.budget)
        self.stats = RetryStats()
        self._table: MethodMatcher[RetryPolicy | None] = MethodMatcher(
            self.options.methods, self.options.default, where="RetryOptions.methods")
        self._typical_s: dict[str, float] = {}
        self._waits: set[asyncio.Future[None]] = set()  # calls waiting out a delay
        self._closed = False

    def close(self) -> None:
        """Wake every call waiting out a backoff, pushback or hedge delay, and wait no
        more from now on: each goes on to its next attempt at once, which the closed
        channel fails ``CANCELLED``. :meth:`MeshChannel.close` calls it for the
        interceptor it made from ``DialOptions.retry``, so a call in its backoff ends with
        the channel, as grpc.aio's ``Channel.close()`` cancels every call."""
        self._closed = True
        for waiter in self._waits:
            if not waiter.done():
                waiter.set_result(None)

    async def _pause(self, delay_s: float) -> None:
        """Sleep ``delay_s`` seconds, or until :meth:`close`."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay_s, _wake, waiter)
        self._waits.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waits.discard(waiter)

    def budget_left(self) -> float:
        """Retries the budget still allows in its window, 0 or more: the budget's
        balance falls below 0 when the requests that paid for retries leave the window
        before those retries do (a debt that holds retries back, not retries allowed)."""
        return max(0.0, self.budget.balance())

    def unary_runner(self, proceed: UnaryProceed) -> UnaryProceed:
        """:meth:`intercept_unary` with ``proceed`` bound: the step a channel's chain
        calls for it (:func:`meshkit.interceptors.chain_unary`), with no frame between it
        and the step before it."""
        # MethodMatcher.lookup's cache and the typical latencies, read inline (a frame
        # and attribute loads less per call): neither dict is ever replaced
        table = self._table
        cached = table._cache
        typical = self._typical_s

        async def unary_call(details: ClientCallDetails, request: Any) -> Any:
            self.stats.calls += 1
            self.budget.record_request()
            try:  # table.lookup(details.method), its cache read inline
                policy = cached[details.method][1]
            except KeyError:
                policy = table.lookup(details.method)
            if policy is None or policy.max_attempts == 1:
                if details.kind is _STREAM_UNARY and not _replayable(request):
                    request = _unsent_kept(request)  # (see _UnsentKept)
                try:  # (a try costs the call nothing until it raises)
                    return await proceed(details, request)
                except AioRpcError as exc:
                    if not self._transparent(details, request, exc):
                        raise
                return await proceed(details, request)
            # a stream-unary request that is an iterator (a generator) is spent by the attempt
            # that sent it: such a call is retried only where nothing was sent (no endpoint,
            # or an attempt that never connected: the messages it took are kept for the
            # next, _UnsentKept)
            replayable = details.kind is not _STREAM_UNARY or _replayable(request)
            if not replayable:
                request = _unsent_kept(request)
            if policy.hedge_delay_s is not None and replayable:
                return await self._hedged(details, request, proceed, policy)
            # worked out on the first failure only, with the counts a retry needs (none
            # of them set on a call whose first attempt answers: 8 bytecodes a call)
            safe: bool | None = None
            base_md: list[tuple[str, Any]] = details.metadata
            while True:
                t0 = _monotonic()
                try:
                    response = await proceed(details, request)
                except AioRpcError as exc:
                    if safe is None:  # the first failure (safe is a bool from here on)
                        safe = policy.idempotent or _has_key(details, request, policy)
                        # step: of the backoff, back to 1 after a server's pushback
                        attempt = step = 1
                        sent = 0  # attempts made (an attempt that found no endpoint was not)
                    unrun = _draining_outcome(details, exc)
                    delay = (self._retry_delay(details, exc, policy, attempt, safe, step, unrun)
                             if replayable or isinstance(exc, NoEndpointsError)
                             or _unsent_again(request, exc) else None)
                    if delay is None:
                        raise
                    if not isinstance(exc, _NOT_SENT):
                        sent += 1
                    # gRFC A6: after a pushback "retry delay will reset to initial backoff"
                    step = 1 if _pushback_s(exc) is not None else step + 1
                    await self._pause(delay)
                    remaining = details.time_remaining_s()
                    if remaining is not None and remaining <= 0 and not self._closed:
                        # a loaded loop woke it past the deadline: an attempt started now
                        # would only fail DEADLINE_EXCEEDED, hiding this one's status
                        self.stats.gave_up_deadline += 1
                        raise
                    attempt += 1
                    if sent:  # gRFC A6: a retry says how many attempts went before it
                        details.metadata = with_previous_attempts(base_md, sent)
                    continue
                # _observe(details.method, latency), its update of a method seen before
                # inline (a frame less per call). The latency is the attempt's from its
                # launch (attempt_started_ns, the channel's), not from t0: the wait for
                # an endpoint before it (discovery, a connection, wait_for_ready) is no
                # part of the method's latency (see _launched_latency_s)
                latency = _monotonic() - t0
                starts = details.attempt_started_ns
                if starts:
                    launched = (_time_ns() - starts[-1]) / 1e9
                    if 0.0 <= launched < latency:
                        latency = launched
                method = details.method
                old = typical.get(method)
                if old is None:
                    self._observe(method, latency)
                else:
                    typical[method] = 0.8 * old + 0.2 * latency
                return response

        return unary_call

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: UnaryProceed) -> Any:
        """Run the call with retries or hedging as its method's policy says."""
        return await self.unary_runner(proceed)(details, request)

    def _transparent(self, details: ClientCallDetails, request: Any,
                     exc: AioRpcError) -> bool:
        """Whether a unary-response call whose method's policy retries nothing (``None``,
        or ``max_attempts=1``), and whose attempt failed with ``exc``, goes once more, at
        once (gRFC A6 "Transparent Retries": "If the RPC reaches the gRPC server library,
        but has never been seen by the server application logic [...], the client
        library will immediately retry it once"): a nack (:func:`is_nack`: a meshkit
        server's shed or drain refusal, a refused stream), an attempt a draining server
        cut before any of it ran (:func:`cut_before_it_ran`), or one whose request never
        left (:class:`ConnectFailedError`); not a stream-unary call whose request was an
        iterator (the attempt spent it), but for one whose attempt never connected, whose
        messages taken are kept (:class:`_UnsentKept`). Within the retry budget (a nack
        is a server's overload: a spent budget ends the call with it) and counted as a
        retry; the second attempt carries :data:`~meshkit._metadata.PREVIOUS_ATTEMPTS`
        unless the first never left. Failure path only."""
        never_sent = isinstance(exc, ConnectFailedError)
        if self._closed or not (never_sent or _draining_outcome(details, exc)
                                or is_nack(exc)):
            return False
        if (details.kind is _STREAM_UNARY and not _replayable(request)
                and not _unsent_again(request, exc)):
            return False
        remaining = details.time_remaining_s()
        if remaining is not None and remaining <= 0:
            self.stats.gave_up_deadline += 1
            return False
        if not self.budget.try_withdraw():
            self.stats.budget_exhausted += 1
            return False
        self.stats.retries += 1
        if not never_sent:
            details.metadata = with_previous_attempts(details.metadata, 1)
        return True

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: StreamProceed) -> Any:
        """Open a streaming-response call; retry it while it is not committed.

        Returns the grpc.aio call of the first attempt when the method's policy does not
        retry it, else a call object with the grpc.aio streaming-call API (``read``,
        ``async for``, metadata, ``code``, ``cancel``, done callbacks) that runs the
        attempts; see the module docstring for what is retried.

        Raises:
            grpc.aio.AioRpcError: no attempt could be opened (``UNAVAILABLE`` from
                :class:`~meshkit.errors.NoEndpointsError` once retries are spent).
        """
        self.stats.calls += 1
        self.budget.record_request()
        policy = self._table.lookup(details.method)
        if policy is None or policy.max_attempts == 1:
            return await proceed(details, request)
        attempt = 1
        while True:
            try:
                call = await proceed(details, request)
                break
            except NoEndpointsError as exc:
                delay = self._retry_delay(details, exc, policy, attempt, safe=False)
                if delay is None:
                    raise
                await self._pause(delay)
                remaining = details.time_remaining_s()
                if remaining is not None and remaining <= 0 and not self._closed:
                    self.stats.gave_up_deadline += 1  # woken late: as intercept_unary
                    raise
                attempt += 1
        if details.kind is not CallKind.UNARY_STREAM or not (
                policy.idempotent or _has_key(details, request, policy)):
            # not safe to repeat: returned as it is, not retried even when nacked (the
            # retrying wrapper costs a task per call and ~74 bytecodes per message)
            return call
        safe = True
        step = 1  # of the backoff, back to 1 after a server's pushback (gRFC A6)
        unserved = False  # an attempt a server refused as a method it does not serve

        def delay_for(exc: AioRpcError, n: int) -> float | None:
            nonlocal step, unserved
            # refused as a method its server does not serve (a wrong server at a stale
            # registry entry's address): none of it ran, so once more on another
            # endpoint whatever the codes, as a unary call so refused is sent on
            # (MeshChannel._served_elsewhere); a second such refusal is the answer
            refused = (not unserved and exc.code() is _UNIMPLEMENTED and not_served(exc))
            delay = self._retry_delay(details, exc, policy, n, safe, step, refused)
            if delay is not None:
                step = 1 if _pushback_s(exc) is not None else step + 1
                unserved = unserved or refused
            return delay

        return RetryingStreamCall(details, request, proceed, call, delay_for, attempt,
                                  pause=self._pause, late=self._woken_late)

    def _woken_late(self, details: ClientCallDetails) -> bool:
        """After a retrying stream's pause: ``True`` (counted in ``gave_up_deadline``) when
        the deadline has passed (a loaded loop woke the pause late), as in
        :meth:`intercept_unary`; never after the channel's close, whose next attempt ends
        ``CANCELLED``."""
        remaining = details.time_remaining_s()
        if remaining is not None and remaining <= 0 and not self._closed:
            self.stats.gave_up_deadline += 1
            return True
        return False

    def _retry_delay(self, details: ClientCallDetails, exc: AioRpcError, policy: RetryPolicy,
                     attempt: int, safe: bool, step: int | None = None,
                     unrun: bool = False) -> float | None:
        """Seconds to wait before the next attempt (after ``attempt`` attempts), or
        ``None`` to give up; without a pushback, the backoff's delay for retry ``step``
        (default ``attempt``). ``unrun``: the attempt was cut before any of it ran
        (:func:`cut_before_it_ran`), retried as a nack is."""
        nacked = unrun or is_nack(exc)
        # an attempt that never reached a server is retried whatever the codes
        if attempt >= policy.max_attempts or not (nacked or exc.code() in
                                                  policy.retryable_codes
                                                  or isinstance(exc, _NOT_SENT)):
            return None
        if isinstance(exc, InvalidCallError):  # the caller's error: no attempt was made
            return None
        if size_refusal(exc.code(), exc.details()):
            return None  # the same request meets the same limit on every attempt
        if exc.code() is _DEADLINE_EXCEEDED and admission_refusal(exc.details(),
                                                                  exc.trailing_metadata()):
            return None  # refused for too short a deadline: a later attempt has less
        if isinstance(exc, NoEndpointsError) and exc.unresolved:
            return None  # it waited resolve_timeout_s for discovery: a retry waits again
        if not safe and not nacked and not isinstance(exc, _NOT_SENT):
            return None
        pushback = _pushback_s(exc)
        if pushback is not None and (pushback < 0 or pushback > policy.max_pushback_s):
            return None
        delay = pushback if pushback is not None else policy.backoff.delay_s(
            attempt if step is None else step)
        remaining = details.time_remaining_s()
        if remaining is not None and remaining - delay <= self._typical_s.get(details.method, 0):
            self.stats.gave_up_deadline += 1
            return None
        if not self.budget.try_withdraw():
            self.stats.budget_exhausted += 1
            return None
        self.stats.retries += 1
        return delay

    def _observe(self, method: str, latency_s: float) -> None:
        """Learn ``method``'s typical latency: an EWMA (0.8 of the old, 0.2 of
        ``latency_s`` seconds) of its answered attempts; intercept_unary writes the
        update of a method seen before inline: change both."""
        typical = self._typical_s
        old = typical.get(method)
        if old is None:
            # bounded as the method matchers' caches: a gateway's channel answers ever
            # new names its callers send, each kept for good; the oldest goes first (a
            # method still called learns its estimate again from its next answer)
            if len(typical) >= MAX_CACHED_METHODS:
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                    del typical[next(iter(typical))]
            typical[method] = latency_s
        else:
            typical[method] = 0.8 * old + 0.2 * latency_s

    async def _hedged(self, details: ClientCallDetails, request: Any, proceed: UnaryProceed,
                      policy: RetryPolicy) -> Any:
        """gRFC A6 hedging: the next attempt goes ``hedge_delay_s`` after the last one, at
        once after a non-fatal failure (a status in ``retryable_codes``, or a nack), or
        after the failure's pushback (a pushback that is negative, malformed or over
        ``max_pushback_s`` sends no more attempts), or after the policy's backoff when
        the attempt found no endpoint (:class:`~meshkit.errors.NoEndpointsError`: every
        endpoint failing; the n-th such attempt waits the backoff's n-th delay, within
        the deadline); an attempt a server's deadline admission refused
        (:func:`~meshkit.resilience._deadline.admission_refusal`: too little time left for
        its ``min_remaining_s``) sends no more but leaves those in flight to answer; an
        attempt cut before it ran by a
        draining server (:func:`cut_before_it_ran`) is non-fatal as a nack; the first
        success wins (one that came in the same loop turn as another attempt's fatal
        status too), any other
        status ends the call, and the attempts still in flight are cancelled. No attempt
        is started once the time left is no longer than the method's typical latency (an
        EWMA of its successful attempts, as for a retry; the deadline passed among them:
        a failure that came after it ends the call with its own status when nothing
        else is in flight; counted in ``gave_up_deadline``)."""
        assert policy.hedge_delay_s is not None
        loop = asyncio.get_running_loop()
        base_md: list[tuple[str, Any]] = details.metadata
        # which attempt tried which endpoint: the span and access line name the one that
        # answered, not the last one sent (only hedged calls pay for this)
        attempts = details.attempts = HedgedAttempts(details.attempts)
        last_task: asyncio.Task[Any] | None = None

        async def attempt(previous: int) -> tuple[Any, Any, float]:
            # gRFC A6: a hedge says how many attempts went before it (taken by the
            # channel's attempt in this step, before any wait for an endpoint); none
            # after attempts that all never left (an earlier hedge's count replaced)
            details.metadata = (with_previous_attempts(base_md, previous) if previous
                                else base_md)
            # the answer and the call that gave it, read in the same step: a hedge launched
            # after it would overwrite details.last_call before this loop looks
            started = time.monotonic()
            response = await proceed(details, request)
            return response, details.last_call, started

        pending: set[asyncio.Task[Any]] = {asyncio.ensure_future(attempt(0))}
        done: set[asyncio.Task[Any]] = set()
        sent = 1
        unpicked = 0  # attempts that found no endpoint: each next one waits a backoff
        unsent = 0  # attempts known to have never left (not counted as previous ones)
        next_at = loop.time() + policy.hedge_delay_s  # when the next attempt is due
        last: BaseException | None = None
        try:
            while True:
                if self._closed:  # the channel closed: no more hedges, only those in flight
                    sent = policy.max_attempts  # (which its close grace lets finish)
                    if not pending:
                        raise MeshRpcError(
                            grpc.StatusCode.CANCELLED, f"call to {details.service!r} "
                            "cancelled: the channel was closed")
                wait_s = max(0.0, next_at - loop.time()) if sent < policy.max_attempts \
                    else None
                remaining = details.time_remaining_s()
                if wait_s is not None and remaining is not None and remaining <= wait_s:
                    wait_s = None  # an attempt sent then could not finish: no timer
                if not pending:
                    if wait_s is None:
                        break
                    await self._pause(wait_s)  # the server's pushback, nothing in flight
                else:
                    done, pending = await asyncio.wait(pending, timeout=wait_s,
                                                       return_when=asyncio.FIRST_COMPLETED)
                    due: float | None = None  # the failures' next attempt: the latest one
                    # an answer that came in the same turn as another attempt's failure
                    # is the call's, whatever the set's order: answers first
                    for task in (done if len(done) == 1 else sorted(done, key=_failed)):
                        exc = task.exception()
                        if exc is None:
                            response, details.last_call, started = task.result()
                            # the attempt's latency, as a retried call's: not the
                            # call's, which holds the hedge delays before it, nor its
                            # wait for an endpoint before its launch
                            self._observe(details.method, _launched_latency_s(
                                details, attempts.launched(task),
                                time.monotonic() - started))
                            attempts.settle(task)
                            return response
                        # a draining refusal is noted against its endpoint; an attempt
                        # that endpoint then cut before any of it ran is a nack (d33cea1)
                        unrun = isinstance(exc, AioRpcError) and _hedge_unrun(
                            details, attempts, task, exc)
                        # a server's deadline admission refused it (none of it ran), or
                        # a call its handler made under its deadline: no later attempt,
                        # with less time left, would fare better; the ones in flight were
                        # admitted, and may still answer
                        refused = isinstance(exc, AioRpcError) and (
                            exc.code() is _DEADLINE_EXCEEDED
                            and admission_refusal(exc.details(), exc.trailing_metadata()))
                        if refused:
                            last, last_task = exc, task
                            sent = policy.max_attempts
                            continue
                        if not isinstance(exc, AioRpcError) or isinstance(
                                exc, InvalidCallError) or size_refusal(
                                exc.code(), exc.details()) or (exc.code() not in
                                                           policy.retryable_codes
                                                           and not unrun
                                                           and not isinstance(exc, _NOT_SENT)
                                                           and not is_nack(exc)) or (
                                isinstance(exc, NoEndpointsError) and exc.unresolved):
                            # fatal (a nack never is: none of the call ran, nor an
                            # attempt that reached no server, whatever the codes); the call
                            # settles on the error itself, not on the attempt launched
                            # last (details.last_call), which may be another one
                            details.last_call = None
                            attempts.settle(task)
                            raise exc
                        last, last_task = exc, task
                        if isinstance(exc, _NOT_SENT):
                            unsent += 1
                        pushback = _pushback_s(exc)
                        if pushback is not None and (pushback < 0
                                                     or pushback > policy.max_pushback_s):
                            sent = policy.max_attempts  # the server said: do not retry
                        else:  # non-fatal: the next attempt at once, or after the pushback
                            wait = pushback or 0.0
                            if isinstance(exc, NoEndpointsError):
                                # no endpoint to send to: a pick at once finds none either
                                unpicked += 1
                                wait = policy.backoff.delay_s(unpicked)
                            at = loop.time() + wait
                            due = at if due is None else max(due, at)
                    if due is not None:
                        next_at = due
                if sent >= policy.max_attempts or loop.time() < next_at or self._closed:
                    continue  # (closed: the loop's top sends no more)
                # the hedge delay passed, or a failure's pushback: send another attempt
                remaining = details.time_remaining_s()
                if remaining is not None and remaining <= self._typical_s.get(details.method,
                                                                              0):
                    # a failure that came after the deadline: an attempt started now
                    # would only fail DEADLINE_EXCEEDED, hiding the status of this one;
                    # or too close to it for the method's typical latency (as a retry)
                    self.stats.gave_up_deadline += 1
                    sent = policy.max_attempts
                elif self.budget.try_withdraw():
                    pending.add(asyncio.ensure_future(attempt(sent - unsent)))
                    sent += 1
                    next_at = loop.time() + policy.hedge_delay_s
                    self.stats.hedges += 1
                else:
                    self.stats.budget_exhausted += 1
                    sent = policy.max_attempts  # no budget: stop hedging, keep waiting
            assert last is not None and last_task is not None
            details.last_call = None  # settle on this error (see above)
            attempts.settle(last_task)
            raise last
        finally:
            # attempts that ended in the same turn as the one acted on: read their errors,
            # else asyncio logs "Task exception was never retrieved" for each
            for task in done:
                if not task.cancelled():
                    task.exception()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


def _launched_latency_s(details: ClientCallDetails, launched: tuple[Any, int] | None,
                        elapsed_s: float) -> float:
    """A hedged attempt's latency, seconds: from its launch on an endpoint
    (``details.attempt_started_ns`` at the attempt's index, ``launched`` as
    :meth:`HedgedAttempts.launched` gives it), not from its start ``elapsed_s`` seconds
    ago, which holds its wait for an endpoint (discovery, a connection,
    ``wait_for_ready``): no part of the method's latency, and a retry or hedge is not
    sent when the time left is shorter than that. ``elapsed_s`` when the launch is not
    known, or the wall clock the channel stamps launches with stepped (the launch reads
    as later than now, or earlier than the attempt's start). ``unary_call`` does the
    same for a retried call's attempt, inline: change both."""
    starts = details.attempt_started_ns
    if launched is None or launched[1] >= len(starts):
        return elapsed_s
    since_s = (_time_ns() - starts[launched[1]]) / 1e9
    return since_s if 0.0 <= since_s < elapsed_s else elapsed_s


def _failed(task: asyncio.Task[Any]) -> bool:
    """Whether a finished attempt's ``task`` failed (a key putting answers first)."""
    return task.exception() is not None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _http_date_delay_s(value: Any) -> float:
    """Seconds until the HTTP-date ``value`` (RFC 9110 section 5.6.7: IMF-fixdate, or the
    obsolete RFC 850 and asctime forms), 0 when it has passed; -1.0 when it is no date."""
    if not isinstance(value, str):
        return -1.0
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year past 9999 overflows
        return -1.0
    if when.tzinfo is None:  # asctime carries no zone: HTTP-dates are UTC (GMT)
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


NACK_METADATA = ("meshkit-nack", "1")
"""Trailing metadata of a call a server refused before running any of it (safe to retry)."""


def is_nack(exc: AioRpcError) -> bool:
    """Whether ``exc`` is a nack: the server refused the call before running any of it, so
    another attempt is always safe. Two kinds:

    * a meshkit server's refusal, with trailing metadata :data:`NACK_METADATA`:
      ``RESOURCE_EXHAUSTED`` ("server busy" from the request gate), or ``UNAVAILABLE``
      with exactly the details :data:`DRAINING_DETAILS` (a draining server's refusal of
      new calls, :func:`draining_refusal`); the trailer on any other status, or on
      ``UNAVAILABLE`` with other details, is not believed;
    * an HTTP/2 stream the server reset with ``REFUSED_STREAM`` (error code 7), e.g. past
      its ``max_concurrent_streams``: RFC 9113 section 8.7 says such a stream was closed
      "prior to any processing" and "can be safely retried". grpc C-core reports it as
      ``UNAVAILABLE`` with exactly the details :data:`REFUSED_STREAM_DETAILS` and no
      trailing metadata, and does not hold calls back at the peer's stream limit itself.

    grpc.aio shows a client no transport state, so a refused stream is told by its status
    alone; details that merely contain C-core's words (a server application's message
    quoting a downstream call's status, or a caller's text) are no nack. A server
    application that forwards a downstream refused stream's status verbatim
    (``context.abort(e.code(), e.details())``), or a downstream meshkit server's nack with
    its trailing metadata (``context.abort(e.code(), e.details(),
    tuple(e.trailing_metadata()))``: grpc.aio's ``abort`` takes a tuple, and raises
    ``TypeError`` for the ``grpc.aio.Metadata`` itself) cannot be told from a refusal.
    """
    code = exc.code()
    if code is not _UNAVAILABLE and code is not _EXHAUSTED:
        return False
    return nacked_status(code, exc.details(), exc.trailing_metadata())


def nacked_status(code: grpc.StatusCode, details: str | None, trailing_metadata: Any) -> bool:
    """:func:`is_nack` of a call that ended with status ``code``, ``details`` and
    ``trailing_metadata`` (key/value pairs, or ``None``)."""
    if code is _UNAVAILABLE:
        if details == DRAINING_DETAILS:
            return _nack_trailer(trailing_metadata)
        return details == REFUSED_STREAM_DETAILS and not trailing_metadata
    return code is _EXHAUSTED and _nack_trailer(trailing_metadata)


HTTP_NOT_FOUND_DETAILS = "Received http2 header with status: 404"
"""grpc C-core's details of an answer with HTTP status 404 and no ``grpc-status`` (gRPC's
HTTP to gRPC status mapping makes it ``UNIMPLEMENTED``): an HTTP/2 server that speaks no
gRPC (an h2c web server, a proxy with no route for the path), since a gRPC server refuses
an unknown method with HTTP 200 and ``grpc-status: 12``."""

NOT_SERVED_DETAILS = ("Method not found!", "unknown service ", "unknown method ",
                      "Method not found: ", "The server does not implement the method ",
                      "Service is unimplemented.", "Method is unimplemented.",
                      HTTP_NOT_FOUND_DETAILS)
"""How grpc's libraries begin the details of their own ``UNIMPLEMENTED`` answer to a
method their server does not serve, and grpc C-core's of an HTTP 404 from a server that
speaks no gRPC (:func:`not_served`)."""


def not_served(exc: AioRpcError) -> bool:
    """Whether an attempt that ended ``UNIMPLEMENTED`` (``exc``) is a server library's
    refusal of a method its server does not serve, none of the call run: trailers-only,
    without metadata, with the details grpc's libraries answer an unknown method with
    (C-core and Python "Method not found!", grpc-go "unknown service ..." / "unknown
    method ...", grpc-java "Method not found: ...", grpc-js "The server does not
    implement the method ...", grpc-dotnet "Service is unimplemented." / "Method is
    unimplemented."; :data:`NOT_SERVED_DETAILS`; trailing metadata of the transport's
    alone taken as none, :func:`transport_only`: grpc-js' answers carry Node's ``date``),
    or an HTTP 404 without ``grpc-status`` (:data:`HTTP_NOT_FOUND_DETAILS`: a server that
    speaks no gRPC, at an address a registry entry outlived; it ran none of the call,
    and, answering fastest and never counted failing, it drew P2C's picks). Not a
    handler's own ``UNIMPLEMENTED``, which has details of its own. The failure path
    only."""
    details = exc.details()
    return (details is not None and details.startswith(NOT_SERVED_DETAILS)
            and not exc.initial_metadata() and transport_only(exc.trailing_metadata()))


def transport_only(trailing_metadata: Any) -> bool:
    """Whether ``trailing_metadata`` (key/value pairs, or ``None``) holds nothing a
    server application set: none, or only the ``date`` header an HTTP/2 stack adds to
    every answer (Node's, under grpc-js: its trailers-only refusals carry it)."""
    return not trailing_metadata or all(key == "date" for key, _ in trailing_metadata)


def draining_refusal(code: grpc.StatusCode, details: str | None,
                     trailing_metadata: Any) -> bool:
    """Whether a call that ended with status ``code``, ``details`` and
    ``trailing_metadata`` was refused by a draining meshkit server before any of it ran:
    ``UNAVAILABLE``, exactly :data:`DRAINING_DETAILS`, and the nack trailer. A nack
    (:func:`nacked_status`: retried whatever the method) that also says the endpoint is
    leaving: the channel reports the attempt to the balancer as ``UNAVAILABLE`` (a
    failure: P2C's penalty, outlier ejection's count), not as overload."""
    return (code is _UNAVAILABLE and details == DRAINING_DETAILS
            and _nack_trailer(trailing_metadata))


# the words of gRPC libraries' refusal of a message over a size limit: C-core (Python)
# and grpc-js "... message larger than max (N vs. M)", "Decompressed message larger
# than max"; grpc-js "Received message that decompresses to a size larger than M";
# grpc-go "grpc: received message larger than max ...", "trying to send message larger
# than max ...", "grpc: [received ]message after decompression larger than max ...";
# grpc-java "gRPC message exceeds maximum size ...", "Decompressed gRPC message exceeds
# maximum size ..."
_TOO_LARGE = ("message larger than max", "message exceeds maximum size",
              "decompresses to a size larger than", "after decompression larger than max",
              # C-core's refusal of headers or trailers over grpc.max_metadata_size's
              # hard limit, the server's of a request's, the client's of a response's
              # ("Stream removed (...)"): "... hard limit (value length N vs. 16384)";
              # not its soft limit's ("... soft limit (N vs. 8192)"), refused at random
              # (a fresh draw per call: a retry may pass)
              "received metadata size exceeds hard limit")


def size_refusal(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a call that ended with status ``code`` and ``details`` met a message size
    limit: ``RESOURCE_EXHAUSTED`` whose details carry a gRPC library's words for it
    (a request over the client's ``grpc.max_send_message_length`` or the server's
    ``grpc.max_receive_message_length``, a response over the client's receive limit or
    the server's send limit, a compressed message inflating past one), or grpc core's
    metadata limit (``grpc.max_metadata_size``: a request's headers over the server's,
    a response's headers or trailers over the client's) past its hard limit (16 KiB by
    default: the same headers refused again and again); not past its soft limit alone
    (8 KiB), which grpc core refuses at random, a fresh draw per call, so a retry may
    pass (retried as the policy says). Not retried nor
    hedged on, whatever the policy's codes: the same request meets the same limit on
    every endpoint. Asked on the failure path only."""
    return (code is _EXHAUSTED and details is not None
            and any(words in details for words in _TOO_LARGE))


def _nack_trailer(trailing_metadata: Any) -> bool:
    """Whether ``trailing_metadata`` (key/value pairs, or ``None``) holds the nack
    trailer :data:`NACK_METADATA`."""
    if not trailing_metadata:
        return False
    for key, value in trailing_metadata:
        if key == NACK_METADATA[0]:
            return bool(value == NACK_METADATA[1])
    return False


REFUSED_STREAM_DETAILS = "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))"
"""grpc C-core's details of a stream the server reset with ``REFUSED_STREAM``."""

DRAINING_DETAILS = "server draining: call refused before it ran"
"""The details of the ``UNAVAILABLE`` (with the nack trailer, :data:`NACK_METADATA`) a
draining meshkit server answers mesh clients' new calls with between its
``drain_delay_s`` and its stop (:meth:`meshkit.server.MeshServer.drain`)."""

CONNECT_FAILED_DETAILS = "failed to connect to all addresses"
"""The start of grpc C-core's details of a call it failed because its channel could not
connect (``UNAVAILABLE`` "failed to connect to all addresses; last error: ...": the
connection was refused, timed out, or its handshake failed), without ``wait_for_ready``."""


def never_connected(code: grpc.StatusCode, details: str | None, initial_metadata: Any,
                    trailing_metadata: Any, state: grpc.ChannelConnectivity) -> bool:
    """Whether an attempt that ended with status ``code``, ``details``, response metadata
    ``initial_metadata`` and ``trailing_metadata`` failed before its request left the
    client, its sub-channel being in connectivity ``state`` when the failure was seen.
    All of:

    * ``UNAVAILABLE`` whose details start with :data:`CONNECT_FAILED_DETAILS` (what grpc
      core answers a call picked onto a sub-channel that could not connect);
    * no initial and no trailing metadata (a server's answer that merely quotes those
      words may carry some);
    * the sub-channel is not ``READY``: a status a server sends arrives over a ready
      connection, so a server application forwarding a downstream call's "failed to
      connect" verbatim (``context.abort(e.code(), e.details())``, common in proxies and
      aggregators) is not taken for one.

    Residual risk: such a forwarded status, arriving in the moment its connection is lost
    (the server stopped just after answering), reads as never sent, and the retry
    interceptor sends the call again although the server ran it. The window is the time
    between the answer's arrival and the check, on the caller's failure path (microseconds
    on an idle loop); a method that must never run twice keeps an idempotency key or a
    deduplication of its own, as for any retry.

    Checked on the failure path only (the channel reads ``state`` from the sub-channel
    there); a call's success costs nothing.
    """
    return (code is _UNAVAILABLE and details is not None
            and details.startswith(CONNECT_FAILED_DETAILS)
            and not initial_metadata and not trailing_metadata
            and state is not grpc.ChannelConnectivity.READY)


class ConnectFailedError(MeshRpcError):
    """A unary-response attempt grpc failed ``UNAVAILABLE`` because its endpoint's
    sub-channel could not connect (:func:`never_connected`): the request never left the
    client. The retry interceptor sends it to another endpoint whatever the method's
    idempotency, as a call that found no endpoint (within the budget, the deadline and
    ``max_attempts``); once retries are spent the caller gets it, with grpc's code and
    details unchanged (``debug_error_string()`` too) and no metadata.

    Args:
        details: grpc's status details ("failed to connect to all addresses; ...").
        debug_error_string: grpc's debug string of the attempt's error.
    """

    def __init__(self, details: str, debug_error_string: str | None = None) -> None:
        AioRpcError.__init__(self, _UNAVAILABLE, Metadata(), Metadata(), details=details,
                             debug_error_string=debug_error_string)


# attempts that never reached a server: retried whatever the method's idempotency
_NOT_SENT = (NoEndpointsError, ConnectFailedError)

_HEALTH_PREFIX = "/grpc.health.v1.Health/"  # a draining meshkit server serves these

# The draining refusals seen (:func:`draining_refusal`), by endpoint (the pool's
# ``Endpoint`` objects, one per instance and address for a channel's life; identity-
# hashed): ``[refused_ns, ended_ns]``, when a retried call's attempt on it was refused
# (``time.time_ns()``, as ``ClientCallDetails.attempt_started_ns``) and when the pool saw
# that endpoint's connection end since (``None``: not yet). Written on the failure path
# only; the pool forgets an endpoint once its sub-channel is closed (or the pool is).
_refusals: dict[object, list[int | None]] = {}


def _draining_outcome(details: ClientCallDetails, exc: AioRpcError) -> bool:
    """On the failure path of a retried unary-response attempt: note a draining refusal
    against its endpoint (:data:`_refusals`), and say whether the attempt was cut before
    any of it ran (:func:`cut_before_it_ran`)."""
    code = exc.code()
    if code is _UNAVAILABLE:
        if (details.last_call is not None and details.attempts
                and draining_refusal(code, exc.details(), exc.trailing_metadata())):
            _refusals[details.attempts[-1]] = [time.time_ns(), None]
        return False
    return code is _CANCELLED and cut_before_it_ran(details, exc)


def _hedge_unrun(details: ClientCallDetails, attempts: HedgedAttempts,
                 task: asyncio.Task[Any], exc: AioRpcError) -> bool:
    """:func:`_draining_outcome` for the failed attempt of a hedged call run by ``task``
    (hedges run side by side: its endpoint and start are its own, not the call's last
    ones): note a draining refusal against its endpoint, and say whether it was cut
    before any of it ran, which makes it non-fatal. Failure path only."""
    code = exc.code()
    if code is not _UNAVAILABLE and code is not _CANCELLED:
        return False
    launched = attempts.launched(task)
    if launched is None:  # it found no endpoint: nothing was sent
        return False
    endpoint, index = launched
    if code is _UNAVAILABLE:
        if draining_refusal(code, exc.details(), exc.trailing_metadata()):
            _refusals[endpoint] = [time.time_ns(), None]
        return False
    started = details.attempt_started_ns
    return index < len(started) and cut_before_it_ran(details, exc, endpoint,
                                                      started[index])


def cut_before_it_ran(details: ClientCallDetails, exc: AioRpcError,
                      endpoint: Any = None, started_ns: int | None = None) -> bool:
    """Whether the last attempt of ``details``' unary-response call, which failed with
    ``exc``, was cut before any code of it ran on its server. All of:

    * ``exc`` is grpc core's ``CANCELLED`` "CANCELLED" without metadata (what a server's
      core sends for a call it accepted but whose application never took it, when it
      stops: grpc/grpc#41785), not meshkit's own (a closed channel, an endpoint's
      ``drain_timeout_s``);
    * the call's method has a unary response and is not the health service's (the
      methods a draining meshkit server refuses to mesh clients);
    * the attempt was launched (its endpoint is ``details.attempts[-1]``) after a
      draining refusal from that endpoint was seen (:data:`_refusals`), and the pool saw
      no end of that endpoint's connection in between: the same server, which refuses
      every such call of a mesh client from its refusal phase on until it stops
      (:meth:`meshkit.server.MeshServer.drain`), so it ran none of it.

    Residual risk: the pool hears of a connection's end a moment after grpc; an attempt
    launched in that moment goes over a new connection, to a new server at the same
    address under the same instance id, and a ``CANCELLED`` "CANCELLED" that server's
    handler sent would read as cut (the window: a loop turn, while the old server's
    listener has just closed). Wall-clock stamps (``time.time_ns()``, as
    ``attempt_started_ns``): a clock stepped back between the refusal and the attempt
    makes the attempt read as sent before it, which retries nothing.

    ``endpoint`` and ``started_ns``: the attempt's endpoint and ``time.time_ns()`` start
    when it is not the call's last one (a hedge: attempts run side by side), else
    ``None`` (taken from ``details``)."""
    if endpoint is None and (details.last_call is None or not details.attempts
                             or not details.attempt_started_ns):
        return False
    if (details.kind is CallKind.UNARY_STREAM or details.kind is CallKind.STREAM_STREAM
            or isinstance(exc, MeshRpcError)
            or exc.details() != "CANCELLED" or exc.initial_metadata()
            or exc.trailing_metadata() or details.method.startswith(_HEALTH_PREFIX)):
        return False
    seen = _refusals.get(details.attempts[-1] if endpoint is None else endpoint)
    if seen is None:
        return False
    refused_ns, ended_ns = seen
    if started_ns is None:
        started_ns = details.attempt_started_ns[-1]
    return (refused_ns is not None and refused_ns <= started_ns
            and (ended_ns is None or started_ns < ended_ns))


def connection_ended(endpoint: object) -> None:
    """The pool saw ``endpoint``'s connection end (its sub-channel left ``READY``, or was
    replaced): an attempt launched from now on may reach another server at its address,
    so a draining refusal seen before proves nothing about it."""
    seen = _refusals.get(endpoint)
    if seen is not None and seen[1] is None:
        seen[1] = time.time_ns()


def forget_endpoint(endpoint: object) -> None:
    """``endpoint`` has left its pool and its sub-channel is closed: drop what
    :data:`_refusals` holds for it."""
    _refusals.pop(endpoint, None)


def _replayable(request: Any) -> bool:
    """Whether a stream-unary ``request`` can be sent again: an iterable that gives a new
    iterator each time (a list, a tuple, a class with ``__iter__``/``__aiter__`` making
    one), not an iterator or a generator, which the first attempt consumed."""
    if isinstance(request, _UnsentKept):
        return False  # (its iterations go on from one source: see _UnsentKept)
    try:
        if hasattr(request, "__aiter__"):
            return request.__aiter__() is not request
        return iter(request) is not request
    except TypeError:
        return False


_STREAM_UNARY = CallKind.STREAM_UNARY
_KEPT_MAX = 4
"""The most messages a one-shot request stream keeps for an attempt that never connected
(:class:`_UnsentKept`): such an attempt takes one (grpc.aio takes the first message, then
waits for the call to start before it writes it, and a call whose sub-channel cannot
connect never starts: 1 taken, measured with grpc 1.85 against a dead port and a listener
that never answers, with and without ``wait_for_ready``); one that took more was sent."""


class _UnsentKept:
    """A stream-unary call's one-shot request stream (a generator, an iterator, the call
    object's ``write()`` queue), taken through so that the messages taken by an attempt
    that never connected (:class:`ConnectFailedError`: none of them left the client) go
    first to the next attempt (gRFC A6 transparent retry: nothing was sent). Each
    iteration (one per attempt: grpc.aio iterates the request once) gives the messages
    taken so far, then goes on taking from the source; up to :data:`_KEPT_MAX` are kept,
    and once more were taken ``kept`` is dropped (``None``: an attempt sent some; nothing
    is kept, nor given again, from then on, and each message is the source's own, without
    a coroutine). A take from an asynchronous source cut in the middle (the attempt's
    writer cancelled as it ended) or in flight drops it too: whether that message was
    taken is not known. The source is never closed here (as without this layer).

    ``source``: the request iterator; ``kept``: the messages taken, or ``None``;
    ``taking``: an asynchronous take in flight."""

    __slots__ = ("kept", "source", "taking")

    def __init__(self, source: Any) -> None:
        self.source = source
        self.kept: list[Any] | None = []
        self.taking = False

    def again(self) -> bool:
        """Whether every message taken so far is kept, none being taken: the stream can
        be given from its start to another attempt."""
        return self.kept is not None and not self.taking


class _SyncKept(_UnsentKept):
    """:class:`_UnsentKept` of a synchronous iterator."""

    __slots__ = ()

    def __iter__(self) -> _SyncTaking:
        return _SyncTaking(self)


class _AsyncKept(_UnsentKept):
    """:class:`_UnsentKept` of an asynchronous iterator."""

    __slots__ = ()

    def __aiter__(self) -> _AsyncTaking:
        return _AsyncTaking(self)


class _SyncTaking:
    """One attempt's iteration of a :class:`_SyncKept`: the kept messages, then the
    source's (kept while there is room)."""

    __slots__ = ("pos", "stream")

    def __init__(self, stream: _UnsentKept) -> None:
        self.stream = stream
        self.pos = 0

    def __iter__(self) -> _SyncTaking:
        return self

    def __next__(self) -> Any:
        stream = self.stream
        kept = stream.kept
        if kept is None:
            return next(stream.source)
        pos = self.pos
        self.pos = pos + 1
        if pos < len(kept):
            return kept[pos]
        item = next(stream.source)
        if pos < _KEPT_MAX:
            kept.append(item)
        else:
            stream.kept = None  # sent: nothing to give again
        return item


class _AsyncTaking:
    """One attempt's iteration of an :class:`_AsyncKept` (see :class:`_SyncTaking`)."""

    __slots__ = ("pos", "stream")

    def __init__(self, stream: _UnsentKept) -> None:
        self.stream = stream
        self.pos = 0

    def __aiter__(self) -> _AsyncTaking:
        return self

    def __anext__(self) -> Any:
        stream = self.stream
        if stream.kept is None:  # the source's own awaitable: no coroutine per message
            return stream.source.__anext__()
        return self._take()

    async def _take(self) -> Any:
        stream = self.stream
        kept = stream.kept
        if kept is None:  # dropped since __anext__ (another attempt took on)
            return await stream.source.__anext__()
        pos = self.pos
        if pos < len(kept):
            self.pos = pos + 1
            return kept[pos]
        stream.taking = True
        try:
            item = await stream.source.__anext__()
        except StopAsyncIteration:
            stream.taking = False
            raise
        except BaseException:
            stream.kept = None  # cut or failed mid-take: not known to be whole
            stream.taking = False
            raise
        stream.taking = False
        if stream.kept is None:
            return item
        self.pos = pos + 1
        if pos < _KEPT_MAX:
            kept.append(item)
        else:
            stream.kept = None
        return item


def _unsent_kept(request: Any) -> Any:
    """``request`` (a stream-unary call's request that cannot be iterated again) as a
    :class:`_UnsentKept` when it is an iterator (sync or async), else as it is (what is
    not one fails as it did)."""
    if hasattr(request, "__anext__"):
        return _AsyncKept(request)
    if hasattr(request, "__next__"):
        return _SyncKept(request)
    return request


def _unsent_again(request: Any, exc: AioRpcError) -> bool:
    """Whether a stream-unary call whose one-shot request stream is ``request`` and whose
    attempt failed with ``exc`` can be sent again: the attempt never connected
    (:class:`ConnectFailedError`) and every message it took is kept
    (:meth:`_UnsentKept.again`). Failure path only."""
    return (isinstance(exc, ConnectFailedError) and isinstance(request, _UnsentKept)
            and request.again())


def _has_key(details: ClientCallDetails, request: Any, policy: RetryPolicy) -> bool:
    key = policy.idempotency_metadata_key
    try:
        if any(k == key and v for k, v in details.metadata or ()):
            return True
    except (TypeError, ValueError):  # not pairs (a dict's keys): the call's refusal says so
        pass
    f = policy.idempotency_field
    return bool(f and getattr(request, f, None))


def _pushback_s(exc: AioRpcError) -> float | None:
    """Server pushback in seconds from trailing metadata; -1.0 for "do not retry".

    ``grpc-retry-pushback-ms`` (gRFC A6): milliseconds, a signed 32-bit integer; negative,
    past 2**31 - 1 or malformed means do not retry (grpc core parses it first, and hands on
    what it cannot read as ``-9223372036854775808``). ``retry-after`` (RFC 9110 section
    10.2.3): seconds (ASCII digits, a decimal fraction allowed; spaces around the value
    ignored, RFC 9110 section 5.5) or an HTTP-date (a date already past: 0); anything
    else (``inf``, ``1e3``, ``+1``, ``1_0``, a value too long for a float) means do not
    retry."""
    md = exc.trailing_metadata()
    if not md:
        return None
    for key, value in md:
        if key == "grpc-retry-pushback-ms":
            try:
                ms = int(value)
            except (TypeError, ValueError):
                return -1.0
            # a signed 32-bit integer (A6): past 2**31 - 1 it is unparseable (grpc-java's
            # Integer.valueOf), not a wait of 25 days and more (core hands it on as sent)
            return -1.0 if ms < 0 or ms > _MAX_PUSHBACK_MS else ms / 1000
        if key == "retry-after":
            # delay-seconds is digits (RFC 9110 section 10.2.3; a decimal fraction is
            # taken too): float() alone read "inf", "1e400", "1_0", "+1" and 400 nines
            # (inf), and an infinite wait under max_pushback_s=inf held the call for ever;
            # the spaces around a field value are no part of it (RFC 9110 section 5.5)
            if isinstance(value, str) and _DELAY_SECONDS.fullmatch(value := value.strip(" \t")):
                s = float(value)
                return s if math.isfinite(s) else -1.0
            return _http_date_delay_s(value)
    return None


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
_MAX_PUSHBACK_MS = 2**31 - 1  # gRFC A6: grpc-retry-pushback-ms is a signed 32-bit integer
