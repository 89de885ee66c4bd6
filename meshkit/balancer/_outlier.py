"""Outlier ejection (circuit breaking per endpoint) as a balancer decorator.

Envoy's outlier detection and Finagle's failure accrual: an endpoint that fails
``consecutive_failures`` calls in a row, or whose failure rate over the last
``failure_rate_window`` calls reaches ``failure_rate`` (calls of the current interval of
``base_ejection_s`` only, as gRFC A50 and Envoy count per interval), is *ejected*: taken out of the
inner balancer for ``base_ejection_s`` times its *multiplier* (capped at
``max_ejection_s``). The multiplier, as Envoy's and gRFC A50's, goes up by one at each
ejection (no further once ``base_ejection_s`` times it reaches ``max_ejection_s``) and
down by one per ``base_ejection_s`` the endpoint then spends in rotation (Envoy's and
A50's ``interval``, 10 s by default as ``base_ejection_time``), so an endpoint that keeps
failing soon after it comes back is ejected for longer and longer, and one that stays
healthy is soon back to ``base_ejection_s``.
When that time is up the endpoint is *half-open*: it goes back for exactly one probe call;
success closes the breaker (back in rotation, its multiplier kept, going down from then;
a unary probe's outcome is handed to the inner balancer's optional ``observe`` then, as
P2C's first latency sample of the returned endpoint), failure ejects it again for
longer. The
probe is a real caller's call, so it waits for a usable connection: while the endpoint's
state is ``FAILING`` (no balancer sends a call there) it stays out of rotation with its
probe pending, and a pick after the connection recovers probes it (the first one, or
with ``k`` endpoints waiting so, one of the next ``k``: each pick looks at one of them,
so that dead instances still registered cost no pick O(ejected)). At most
``max_ejection_percent`` of the endpoints are ejected at once (at least one may always be):
the cap guards against a shared cause (a dependency of every endpoint down, or failing
part of every endpoint's calls) ejecting the whole service, and holds as Envoy's does. It
does not shelter an endpoint that fails *every* call while its peers in rotation succeed:
such an endpoint (a full ``failure_rate_window`` of failures and ``consecutive_failures``
in a row: ``k`` calls, the larger of the two) is ejected beyond the cap when its peers in
rotation fail so rarely (``f``, their windows' failures pooled) that an endpoint as good
as they are would fail ``k`` calls in a row less than once in a million (``f ** k <=
1e-6``; with the default 20-call window, peers failing at most about half their calls),
since keeping it only feeds it calls it will fail (a broken instance that fails fast
would otherwise draw most calls). The peers' windows must hold ``k`` calls at least
between them (a minimum request volume, as gRFC A50's): a peer's one success is no
evidence. An endpoint that failed a short run (one back from an
ejection, its window empty) or beside peers failing about as often is within the cap.

Ejection never empties a service (*panic routing*, Envoy's answer below its healthy panic
threshold: balance across all hosts). ``max_ejection_percent`` allows at least one
ejection, so a service of one endpoint (or of two, with one failing its connection) could
have nothing left in rotation: a burst of calls that time out together while the only
server is briefly overloaded would eject it, and every call would fail ``UNAVAILABLE``
for ``base_ejection_s`` although the server answers again at once. Instead, when the
inner balancer has no endpoint to give (none left in rotation, or every one there
``FAILING``), ``pick`` gives an ejected endpoint whose connection is not ``FAILING``
(those the call has not tried first, in turn), counted in
:attr:`EjectingBalancer.panic_picks`. Such a call's outcome is neutral: it neither ends
nor extends the ejection, which ends by its probe as always (the probe still takes the
first pick once the ejection time is up). Only with every endpoint ejected or ``FAILING``
and no ejected one connectable does ``pick`` return ``None``, and the channel fails the
call fast with ``UNAVAILABLE`` instead of queueing. Nothing changes while an endpoint is
in rotation and usable: the picks then are the inner balancer's.

Which status codes count as failures: ``failure_codes`` (default the ones that mean the
endpoint, not the request, is at fault: UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS,
DEADLINE_EXCEEDED); any other code is a success. (The balanced channel reports a
*stream* that its deadline ended as ``CANCELLED``: a stream's deadline bounds its life,
e.g. a watch renewed every n seconds, and says nothing about the endpoint. So is a
client-streaming call, an upload, whose deadline ran out before its caller half-closed
the request stream: the server never had the whole request, the caller was slow, as
Envoy's route timeout only starts at the end of the downstream request.)

``CANCELLED`` is neither: it says nothing about the endpoint. The balanced channel reports
it for an attempt nobody's outcome decides (a hedge that lost, a call its caller
cancelled or gave up on, an attempt grpc refused before it left), so such an outcome is
neutral: a call in rotation neither resets the run of consecutive failures nor adds to
the failure-rate window, and a cancelled probe leaves the endpoint half-open (its
ejection count and window kept; the next pick probes it again). It cannot be made a
failure code.

A *stream* (a server-streaming or bidirectional call: a watch, a subscription, which may
live for hours) is picked with :meth:`EjectingBalancer.pick_stream`, whose outcome
callback also has ``responded()``, which the channel calls at the stream's first
response message. Sent as the half-open probe, a stream is decided by that first
response: an endpoint that answers is back in rotation at once, as a unary probe's
success brings it back, instead of being held out for the stream's whole life (meshkit's
retry policy commits a stream at its first message for the same reason, gRFC A6; Envoy
and gRFC A50 never hold an endpoint out behind a stream). Its end outcome then counts as
an ordinary call's in rotation (a stream that fails after answering is one failure, not
a failed probe); a stream probe that ends before answering is decided by its end, as a
unary probe. A stream probe with neither within ``base_ejection_s`` (a watch whose
server speaks only on events may say nothing for minutes) would hold its endpoint out for
its whole life, since no other call may probe meanwhile: the first pick after that bound
returns the endpoint to rotation undecided, as Envoy and gRFC A50 return an endpoint
when its ejection time is up (neither probes; a silent stream is no failure, and a
stream's deadline says nothing about the endpoint). It is not forgiven: its multiplier
is kept (going down in rotation), so a relapse ejects it for longer, unless the stream
answers (a late first response resets the multiplier); the stream's end counts as an
ordinary call's. The bound is checked against the clock at picks (no timer), and only a
stream probe has one: a unary probe is decided by its outcome, which its deadline bounds
(silence is no answer for a unary call). A stream in rotation counts once, by its end
outcome. A client-streaming call (an upload) is picked with
:meth:`~EjectingBalancer.pick_stream` too, and held to the same bound as a probe: its
server cannot answer before its caller half-closes, however long the caller sends (its
response is its end, so it never calls ``responded()``).

Outlier state belongs to an endpoint at its address: an update keeps it for an endpoint
of the same instance id *and* address only (the endpoint pool makes an instance that
re-registered at another address, a restarted process, a new endpoint), so a new process
does not inherit its predecessor's ejection (Envoy keys hosts by address). Outcomes of
calls still in flight on an endpoint that left are ignored.
"""

from __future__ import annotations

import bisect
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from fractions import Fraction

import grpc

from meshkit._config import (
    check_clock,
    check_instance,
    check_int,
    check_number,
    check_seconds,
    check_status_codes,
)
from meshkit._fields import Normalised
from meshkit.balancer._endpoint import Balancer, Done, Endpoint, EndpointState, StateIndex
from meshkit.errors import ConfigError

__all__ = ["EjectingBalancer", "OutlierOptions", "StreamDone"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_FAILING = EndpointState.FAILING
_READY = EndpointState.READY
_IDLE = EndpointState.IDLE
_NEVER = float("inf")
# _next_expiry while the inner balancer's list is behind (_moved): the next pick's test
# for a due probe holds, and brings it up to date first (_take_probe)
_STALE = -_NEVER
# the most likely an endpoint as good as its peers fails its whole window and run: beyond
# it, an endpoint failing every call is ejected beyond max_ejection_percent
_BROKEN_ODDS = 1e-6
_DEFAULT_FAILURES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED,
})


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierOptions:
    """Parameters of outlier ejection.

    Args:
        consecutive_failures: failures in a row that eject an endpoint, >= 1 (default 5).
        failure_rate: failure share over the window that ejects, (0, 1]; ``None`` (default)
            disables the rate rule.
        failure_rate_window: calls in the rate window, >= 1 (default 20); the rule applies
            once the window is full. The window holds the calls of one interval of
            ``base_ejection_s`` (gRFC A50's and Envoy's ``interval``, whose call counters
            are reset each interval): the first outcome after an interval has passed
            since its first began starts it afresh, so ``failure_rate_window`` is also
            the least number of calls in an interval that can eject (A50's
            ``request_volume``), and failures long past never join a later window.
        base_ejection_s: first ejection time, seconds (default 10.0); an ejection lasts
            ``multiplier * base_ejection_s``, the multiplier one more than at the last
            ejection, less one per ``base_ejection_s`` spent in rotation since (Envoy's
            and gRFC A50's ejection multiplier; module docstring). Also how long a
            stream sent as the probe may stay silent (no response message, no end)
            before its endpoint returns to rotation undecided (module docstring).
        max_ejection_s: cap of one ejection, seconds (default 300.0).
        max_ejection_percent: most endpoints ejected at once, percent 0..100 (default 50;
            Envoy's ``max_ejection_percent``); one endpoint may always be ejected, and
            one failing every call while its peers in rotation succeed may be ejected
            beyond it (module docstring). When nothing usable is left in rotation
            (a single-endpoint service whose one endpoint was ejected), calls go to the
            ejected endpoints whose connection is not ``FAILING`` anyway (panic routing,
            module docstring): ejection never empties a service.
        failure_codes: status codes that count as failures, any collection of
            ``grpc.StatusCode``, stored as a frozenset; not ``CANCELLED`` (never an
            endpoint's outcome, see the module docstring).

    Raises:
        ConfigError: a value out of range (quoted).
    """

    consecutive_failures: int = 5
    failure_rate: float | None = None
    failure_rate_window: int = 20
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 50.0
    failure_codes: Normalised[Collection[grpc.StatusCode], frozenset[grpc.StatusCode]] = (
        Normalised(_DEFAULT_FAILURES))  # noqa: RUF009 - immutable: _fields.py

    def __post_init__(self) -> None:
        check_int("consecutive_failures", self.consecutive_failures)
        if self.failure_rate is not None:
            check_number("failure_rate", self.failure_rate, low_open=True, high=1.0)
        check_int("failure_rate_window", self.failure_rate_window)
        check_seconds(self, ("base_ejection_s",))
        check_number("max_ejection_s", self.max_ejection_s, finite=False)
        check_number("max_ejection_percent", self.max_ejection_percent, high=100.0)
        if not self.max_ejection_s >= self.base_ejection_s:
            raise ConfigError(
                f"max_ejection_s must be >= base_ejection_s, got {self.max_ejection_s!r}")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigError(
                f"max_ejection_percent must be in [0, 100], got {self.max_ejection_percent!r}")
        object.__setattr__(self, "failure_codes",
                           check_status_codes("failure_codes", self.failure_codes))
        if _CANCELLED in self.failure_codes:
            raise ConfigError("failure_codes cannot hold CANCELLED (a cancelled call says"
                              f" nothing about the endpoint), got {set(self.failure_codes)!r}")


class _Health:
    __slots__ = ("address", "consecutive", "ejected_until", "probe_until", "probing",
                 "returned_at", "stream_probe", "times", "window", "window_since")

    def __init__(self, window: int, address: str) -> None:
        self.address = address  # whose state this is (an instance that moved is new)
        self.consecutive = 0
        # the ejection multiplier (Envoy's, gRFC A50's): up by one at each ejection, down
        # by one per base_ejection_s in rotation since returned_at (worked out lazily, at
        # the next ejection: nothing per call)
        self.times = 0
        self.returned_at = 0.0
        # None: in rotation; else out until a probe succeeds (None, not a number: an
        # injected clock may read 0 or below)
        self.ejected_until: float | None = None
        self.probing = False
        # while probing: when an undecided stream probe returns the endpoint (inf for a
        # unary probe, which its deadline decides), and that stream's outcome callback
        self.probe_until = _NEVER
        self.stream_probe: StreamDone | None = None
        self.window: deque[bool] = deque(maxlen=window)
        # when the failure-rate rule's interval holding the window's calls began (-inf:
        # none yet; kept only with that rule on)
        self.window_since = -_NEVER


class EjectingBalancer:
    """Wraps any :class:`~meshkit.balancer.Balancer` with outlier ejection.

    Args:
        inner: the balancer that picks among endpoints in rotation.
        options: :class:`OutlierOptions`.
        clock: monotonic seconds (default ``time.monotonic``).
        on_change: called with ``(endpoint_key, ejected: bool)`` on every ejection and
            return (for logs and metrics).
        on_probe_free: called with ``endpoint_key`` when a probe ends without a verdict
            (cancelled): the endpoint may be probed by the next pick again, which nothing
            else announces (a caller waiting for an endpoint wakes on it).

    Raises:
        ConfigError: ``inner`` is no balancer (a class given instead of an instance, a
            name: no ``update`` and ``pick`` methods), ``options`` no
            :class:`OutlierOptions` (a ``P2COptions``, the inner balancer's) or ``clock``
            not callable (``time.monotonic()``: its reading); quoted.

    Attributes:
        ejections: ejections since the balancer was made.
        panic_picks: picks of an ejected endpoint because nothing usable was left in
            rotation (panic routing, module docstring).
    """

    __slots__ = ("_all", "_cap", "_census", "_clock", "_ejected", "_ejected_by_state",
                 "_health", "_inner", "_lean_ok", "_max_times", "_next_expiry", "_observe",
                 "_ok_fails", "_on_change", "_on_probe_free", "_opts", "_pos",
                 "_rate_interval_s", "_recheck_at", "_remove", "_restore", "_stale", "_turn",
                 "_waiting", "ejections", "panic_picks")

    def __init__(self, inner: Balancer, options: OutlierOptions | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, bool], None] | None = None,
                 on_probe_free: Callable[[str], None] | None = None) -> None:
        if isinstance(inner, type) or not all(
                callable(getattr(inner, m, None)) for m in ("update", "pick")):
            raise ConfigError("inner must be a Balancer (an object with update() and pick(),"
                              f" e.g. P2C()), got {inner!r}")
        check_instance("options", options, OutlierOptions)
        check_clock("clock", clock, wall=False)
        self._inner = inner
        # the inner balancer's optional census (Balancer): told every endpoint, so that
        # it can count the ejected ones as unhealthy (ZoneAwareBalancer's spillover)
        self._census: Callable[[Sequence[Endpoint]], object] | None = getattr(
            inner, "census", None)
        # and its optional observe (Balancer): a successful unary probe's outcome, handed
        # over once its endpoint is back in rotation (P2C's first latency sample of it)
        self._observe: Callable[[Endpoint, grpc.StatusCode, float], object] | None = (
            getattr(inner, "observe", None))
        # and its optional remove/restore (Balancer): an ejection or a return hands it the
        # one endpoint that moved, not the whole list in rotation (both or neither used)
        remove = getattr(inner, "remove", None)
        restore = getattr(inner, "restore", None)
        self._remove: Callable[[Endpoint], object] | None = (
            remove if remove is not None and restore is not None else None)
        self._restore: Callable[[Endpoint, int], object] | None = (
            restore if remove is not None else None)
        self._opts = options or OutlierOptions()
        self._ok_fails = _OK in self._opts.failure_codes
        # the failure-rate rule counts one interval's calls (gRFC A50, Envoy): 0.0 when
        # the rule is off (no clock read per outcome then)
        self._rate_interval_s = (0.0 if self._opts.failure_rate is None
                                 else self._opts.base_ejection_s)
        # an OK outcome is no failure and no rate window is kept: pick's done records it
        # inline (_record's success path), without _record's frame
        self._lean_ok = not self._ok_fails and not self._rate_interval_s
        # the multiplier goes no higher than max_ejection_s needs (Envoy: "When ejected
        # host reaches max_ejection_time, it does not increase any more")
        steps = self._opts.max_ejection_s / self._opts.base_ejection_s
        self._max_times = math.ceil(steps) if steps < sys.maxsize else sys.maxsize
        self._clock = clock
        self._on_change = on_change
        self._on_probe_free = on_probe_free
        self._all: tuple[Endpoint, ...] = ()
        # each endpoint's place in _all, by key (None: a key listed twice, when every
        # change is a full update of the inner balancer)
        self._pos: dict[str, int] | None = {}
        self._cap = 1  # endpoints that may be ejected at once (set by update)
        self._health: dict[str, _Health] = {}
        # ejection not over, in the order of _all (kept by _sync and _moved)
        self._ejected: tuple[Endpoint, ...] = ()
        # the same endpoints by state (kept by their state's setter): a panic pick reads
        # the usable ones, not every ejected endpoint's state
        self._ejected_by_state = StateIndex()
        self._next_expiry = _NEVER  # (pick tests for this object: nothing ejected)
        # the inner balancer (one without remove/restore) still has the list in rotation
        # of before the last ejections or returns: updated at the next pick (_moved)
        self._stale = False
        # due probes waiting for their connection (FAILING), looked at one a pick (in
        # turn) until _recheck_at, the next time something else falls due (_take_probe);
        # () when not known (_schedule)
        self._waiting: tuple[Endpoint, ...] = ()
        self._turn = 0
        self._recheck_at = _NEVER
        self.ejections = 0
        self.panic_picks = 0

    @property
    def inner(self) -> Balancer:
        """The wrapped balancer (with the endpoints in rotation now)."""
        if self._stale:
            self._sync()
        return self._inner

    def cold_start(self, on: bool) -> None:
        """Hand the pool's word on the first discovery answer (``on``: its updates are
        coming in; see :meth:`P2C.cold_start <meshkit.balancer.P2C.cold_start>`) to the
        inner balancer, if it takes it."""
        hook = getattr(self._inner, "cold_start", None)
        if hook is not None:
            hook(on)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list; the ejection state of an endpoint that stays (same
        instance id and address) is kept, an endpoint at a new address starts afresh.
        The inner balancer gets the endpoints in rotation (``update``), after the whole
        list (its ``census``, where it has one: :class:`~meshkit.balancer.Balancer`).
        Each later ejection or return hands it that one endpoint (its optional
        ``remove`` / ``restore``, where it has both; else the list in rotation again)."""
        w = self._opts.failure_rate_window
        old = self._health
        health = {}
        for ep in endpoints:
            h = old.get(ep.key)
            if h is None or h.address != ep.address:
                h = _Health(w, ep.address)
            health[ep.key] = h
        self._health = health
        self._all = tuple(endpoints)
        pos = {ep.key: i for i, ep in enumerate(self._all)}
        self._pos = pos if len(pos) == len(self._all) else None
        # max_ejection_percent of them, at least one (Envoy: "will eject at least one
        # host regardless of the value"), worked out on the percentage as written
        # (Fraction of its shortest repr, as a plain float: a float subclass's own repr,
        # numpy's 'np.float64(18.4)', is no number): 18.4 % of 375 is 69, where the
        # binary float product 375 * 18.4 / 100 falls just short (68.99999999999999)
        percent = Fraction(repr(float(self._opts.max_ejection_percent)))
        self._cap = max(1, math.floor(percent * len(self._all) / 100))
        if self._census is not None:  # every endpoint, the ejected ones included
            self._census(self._all)
        self._sync()

    def _sync(self) -> None:
        """Give the inner balancer the endpoints in rotation (all of them, ``update``),
        list the ejected ones afresh, and schedule probes. O(n)."""
        self._stale = False
        health = self._health
        self._inner.update([ep for ep in self._all if health[ep.key].ejected_until is None])
        self._ejected = tuple(ep for ep in self._all
                              if health[ep.key].ejected_until is not None)
        self._ejected_by_state.track(self._ejected)
        self._schedule()

    def _moved(self, ep: Endpoint, out: bool) -> None:
        """``ep`` was just ejected (``out``) or returned to rotation: the inner balancer
        is handed that endpoint alone (its ``remove``, or ``restore`` at its place in the
        list in rotation), where it has both, so that a storm of ejections costs
        O(ejected) each (a copy of the ejected tuple, in C) and the inner balancer's
        own, not a full ``update`` of every endpoint in rotation (5-8 ms each at 4,000
        endpoints: seconds of event-loop stall for 2,000 ejections). An inner balancer
        without them (:class:`~meshkit.balancer.WeightedRoundRobin`,
        :class:`~meshkit.balancer.RingHash`, whose schedule or ring is remade whole) gets
        its ``update`` at the next pick (or :meth:`next_probe_in_s`, :attr:`inner`, a
        probe's ``observe``), once for every ejection and return since: a storm between
        two picks costs one update, not one each; no pick sees an ejected endpoint.
        """
        pos = self._pos
        remove, restore = self._remove, self._restore
        i = pos.get(ep.key) if pos is not None else None
        if pos is None or i is None:
            self._sync()
            return
        ep = self._all[i]  # (the listed object: an update may have replaced an equal one)
        ejected = self._ejected
        # the ejected ones listed before it: its place in the list in rotation is i - j
        j = bisect.bisect_left(ejected, i, key=lambda e: pos[e.key])
        if out:
            if j < len(ejected) and ejected[j] is ep:  # (out already: nothing moves)
                self._schedule()
                return
            self._ejected = (*ejected[:j], ep, *ejected[j:])
            self._ejected_by_state.add(ep)
            if remove is None or restore is None:
                self._stale = True
            else:
                remove(ep)
        else:
            if j >= len(ejected) or ejected[j] is not ep:  # (not out: nothing moves)
                self._schedule()
                return
            self._ejected = (*ejected[:j], *ejected[j + 1:])
            self._ejected_by_state.discard(ep)
            if remove is None or restore is None:
                self._stale = True
            else:
                restore(ep, i - j)
        self._schedule()

    def _schedule(self) -> None:
        """When the next pick looks for a probe: the earliest end of an ejection whose
        probe is not out (in the past while a probe waits for its connection), or of
        the bound of a stream probe's verdict (its endpoint then returns). O(ejected)."""
        health = self._health
        nxt = _NEVER  # (this object itself when nothing falls due: pick tests for it)
        for ep in self._ejected:
            h = health[ep.key]
            t = h.probe_until if h.probing else h.ejected_until
            if t is not None and t < nxt:
                nxt = t
        self._next_expiry = _STALE if self._stale else nxt
        self._waiting = ()  # _take_probe looks at every ejected endpoint again

    def _out(self, key: str) -> bool:
        # out of rotation from its ejection until a probe succeeds (waiting for its time,
        # for its connection, or for its probe's outcome)
        return self._health[key].ejected_until is not None

    def next_probe_in_s(self) -> float | None:
        """Seconds until the next ejected endpoint's time is up and it may be probed, or
        an undecided stream probe returns its endpoint (0 when one is due already),
        ``None`` when none will: how long a call waiting for an endpoint
        (``wait_for_ready``) sleeps at most before it looks again, since nothing else
        wakes it when an ejection ends."""
        if self._stale:
            self._sync()
        if self._next_expiry == _NEVER:
            return None
        return max(0.0, self._next_expiry - self._clock())

    def ejected(self) -> list[str]:
        """Keys of endpoints currently out of rotation (ejected, half-open or being
        probed)."""
        return [ep.key for ep in self._all if self._out(ep.key)]

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Pick through the inner balancer; an endpoint whose ejection expired and whose
        connection is not ``FAILING`` is sent one probe call first. When the inner
        balancer has nothing to give, an ejected endpoint whose connection is not
        ``FAILING`` (panic routing, module docstring; its outcome is neutral), else
        ``None``."""
        # nothing ejected (_schedule's _NEVER itself): no clock read (3 bytecodes and a
        # C call a pick)
        if self._next_expiry is not _NEVER and self._next_expiry <= self._clock():
            probe = self._take_probe(_NEVER)
            if probe is not None:
                ep, h = probe

                def probe_done(code: grpc.StatusCode, latency_s: float) -> None:
                    h.probing = False
                    self._record(ep, h, code, probe=True)
                    if (self._observe is not None and h.ejected_until is None
                            and self._health.get(ep.key) is h):
                        # back in rotation: the probe is its first latency sample
                        if self._stale:
                            self._sync()
                        self._observe(ep, code, latency_s)

                return ep, probe_done
        got = self._inner.pick(key, exclude)
        if got is None:
            return self._panic(exclude) if self._ejected else None
        ep, inner_done = got
        h = self._health[ep.key]

        def done(code: grpc.StatusCode, latency_s: float) -> None:
            inner_done(code, latency_s)
            if code is _OK and self._lean_ok:  # _record(ep, h, code)'s path, inline
                h.consecutive = 0
                h.window.append(False)
            else:
                self._record(ep, h, code)

        return ep, done

    def pick_stream(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, StreamDone] | None:
        """:meth:`pick` for a streaming call (a watch, a subscription; an upload, whose
        server cannot answer before its caller half-closes): the outcome callback
        (:class:`StreamDone`) also has ``responded()``, to call once at a response
        stream's first message (an upload never calls it: its response is its end). A
        stream sent as the half-open probe is
        decided by it (success: back in rotation at once), or by its end when it ends
        before answering; with neither within ``base_ejection_s``, the first pick after
        returns its endpoint to rotation, its ejection count kept; see the module
        docstring. The inner balancer's stream pick (``pick_stream``) is used when it has
        one, else its ``pick``.

        Args:
            key: the request key (affinity balancers), or ``None``.
            exclude: endpoints this logical call tried already (a preference).

        Returns:
            ``(endpoint, done)``, or ``None`` when no endpoint can take the call (an
            ejected one whose connection is not ``FAILING`` can, when nothing in rotation
            can: panic routing, see :meth:`pick`).
        """
        if self._next_expiry is not _NEVER and self._next_expiry <= self._clock():
            probe = self._take_probe(self._opts.base_ejection_s)
            if probe is not None:
                ep, h = probe
                h.stream_probe = sd = StreamDone(self, ep, h, None)
                return ep, sd
        inner_pick = getattr(self._inner, "pick_stream", None)
        got = (inner_pick or self._inner.pick)(key, exclude)
        if got is None:
            if not self._ejected:
                return None
            panic = self._panic(exclude)
            if panic is None:
                return None
            ep = panic[0]
            return ep, _PanicStreamDone(self, ep, self._health[ep.key], panic[1])
        ep, inner_done = got
        return ep, StreamDone(self, ep, self._health[ep.key], inner_done)

    def _panic(self, exclude: Collection[Endpoint]) -> tuple[Endpoint, Done] | None:
        """Nothing usable in rotation: an ejected endpoint whose connection is not
        ``FAILING`` (one not in ``exclude`` if there is one; in turn), with an outcome
        callback that records nothing, or ``None`` when there is none (module
        docstring, panic routing)."""
        # drawn from the ejected endpoints kept by state, READY then IDLE ones in turn:
        # O(1) while few are excluded (a list of every ejected one's state was O(ejected)
        # a pick, 212 us with 4,000 ejected)
        ready = self._ejected_by_state.of(_READY)
        idle = self._ejected_by_state.of(_IDLE)
        nr = len(ready)
        n = nr + len(idle)
        if not n:
            return None
        self.panic_picks += 1
        turn = self.panic_picks
        for i in range(min(n, 4)):
            k = (turn + i) % n
            ep = ready[k] if k < nr else idle[k - nr]
            if not (exclude and ep in exclude):
                return ep, _neutral
        usable = ready + idle
        untried = [ep for ep in usable if ep not in exclude]
        choices = untried or usable
        return choices[turn % len(choices)], _neutral

    def _take_probe(self, verdict_s: float) -> tuple[Endpoint, _Health] | None:
        """The ejected endpoint whose time is up and whose connection is not ``FAILING``,
        now being probed (``probing`` set; its endpoint returned undecided after
        ``verdict_s``, ``inf`` for never), and its health, or ``None``. Looks at the
        ejected endpoints only, and changes nothing in the inner balancer (the endpoint
        stays out of its rotation while probed). A stream probe undecided past its
        bound returns its endpoint to rotation first (:meth:`_return_undecided`).

        While due endpoints wait for their connection (``FAILING``: a dead instance
        still registered), nothing tells the balancer when one recovers, so picks keep
        asking; each then looks at one of them, in turn, until something else falls due
        (an ejection's end, a stream probe's bound): O(1) a pick, not O(ejected), and a
        recovered one is probed within as many picks as endpoints wait. An inner balancer
        behind on the ejections and returns since the last pick is brought up to date
        first (:meth:`_moved`)."""
        if self._stale:
            self._sync()
            if not self._next_expiry <= self._clock():
                return None
        now = self._clock()
        waiting = self._waiting
        if waiting and now < self._recheck_at:
            turn = self._turn = (self._turn + 1) % len(waiting)
            if waiting[turn].state is _FAILING:
                return None
        health = self._health
        waits: list[Endpoint] = []
        recheck_at = _NEVER
        for ep in self._ejected:
            h = health[ep.key]
            until = h.ejected_until
            if until is None:
                continue
            if h.probing:
                if h.probe_until <= now:
                    self._return_undecided(ep, h)
                elif h.probe_until < recheck_at:
                    recheck_at = h.probe_until
                continue
            if until <= now:
                if ep.state is _FAILING:
                    waits.append(ep)  # probed once its connection recovers: look again
                    continue
                h.probing = True
                h.probe_until = now + verdict_s
                h.stream_probe = None
                self._schedule()
                return ep, h
            if until < recheck_at:
                recheck_at = until
        if not waits:
            self._schedule()
        else:
            self._waiting = tuple(waits)
            self._recheck_at = recheck_at
        return None

    def _return_undecided(self, ep: Endpoint, h: _Health) -> None:
        """A stream probe that neither answered nor ended within ``base_ejection_s``
        (a watch whose server speaks only on events): its endpoint is back in rotation,
        as Envoy and gRFC A50 return an endpoint when its time is up, rather than held
        out for the stream's life (while it is out, no other call may probe). It is not
        forgiven: its multiplier is kept, going down by one per ``base_ejection_s`` in
        rotation from now, until the stream answers (then reset, see
        :meth:`StreamDone.responded`). The stream goes on as a call in rotation."""
        sd = h.stream_probe
        h.stream_probe = None
        if sd is not None:
            sd._probe = False  # its end is an ordinary call's outcome
        h.probing = False
        h.ejected_until = None
        h.returned_at = self._clock()
        h.consecutive = 0
        h.window.clear()
        self._moved(ep, False)
        if self._on_change:
            self._on_change(ep.key, False)

    def _forgive(self, ep: Endpoint, h: _Health) -> None:
        """The stream of a probe returned undecided answered: the endpoint works, so its
        next ejection counts from the first again (while it is in rotation)."""
        if h.ejected_until is None and self._health.get(ep.key) is h:
            h.times = 0

    def _record(self, ep: Endpoint, h: _Health, code: grpc.StatusCode,
                probe: bool = False) -> None:
        # `is _OK` first: an Enum hashes in Python, and most calls succeed
        if code is _OK:
            failed = self._ok_fails
        elif code is _CANCELLED:  # says nothing about the endpoint
            if probe and h.ejected_until is not None:
                self._schedule()  # still half-open: the next pick probes it again
                if self._on_probe_free:
                    self._on_probe_free(ep.key)
            return
        else:
            failed = code in self._opts.failure_codes
        if self._rate_interval_s:  # the rate rule's window holds this interval's calls
            now = self._clock()
            if now - h.window_since >= self._rate_interval_s:
                h.window.clear()
                h.window_since = now
        if not failed:
            h.consecutive = 0
            h.window.append(False)
            if probe and self._health.get(ep.key) is h:
                h.ejected_until = None
                h.returned_at = self._clock()  # its multiplier goes down from now
                h.window.clear()
                self._moved(ep, False)
                if self._on_change:
                    self._on_change(ep.key, False)
            return
        opts = self._opts  # (a failure's only: not read on a success's path)
        h.consecutive += 1
        h.window.append(True)
        trip = probe or h.consecutive >= opts.consecutive_failures or (
            opts.failure_rate is not None and len(h.window) == h.window.maxlen
            and sum(h.window) / len(h.window) >= opts.failure_rate
        )
        if trip and (probe or h.ejected_until is None) and self._health.get(ep.key) is h and (
                probe or self._may_eject() or self._broken_beside_healthy(ep, h)):
            now = self._clock()
            base = opts.base_ejection_s
            times = h.times
            if times and not probe:  # in rotation since returned_at: down one per base
                times = max(0, times - int((now - h.returned_at) // base))
            h.times = times = min(times + 1, self._max_times)
            was_out = h.ejected_until is not None  # (a failed probe: out already)
            h.ejected_until = now + min(opts.max_ejection_s, base * times)
            h.consecutive = 0
            h.window.clear()
            self.ejections += 1
            if was_out:
                self._schedule()
            else:
                self._moved(ep, True)
            if self._on_change:
                self._on_change(ep.key, True)

    def _broken_beside_healthy(self, ep: Endpoint, h: _Health) -> bool:
        """``ep`` failed every call of a full window and ``consecutive_failures`` in a
        row (``k`` calls, the larger of the two), while its peers in rotation failed so
        rarely (``f``: the failures of their windows, pooled, at least ``k`` calls) that
        an endpoint as good as they are fails ``k`` in a row less than once in a million
        (``f ** k <= 1e-6``).

        Asked at every failure of an endpoint that tripped at the cap, it looks at the
        peers once per ``k`` failures in a row (at ``k``, ``2k``...): O(endpoints x
        window) then, so O(endpoints) per failure at most, and nothing per success."""
        opts = self._opts
        window = h.window
        k = max(opts.failure_rate_window, opts.consecutive_failures)
        # a full window of failures and consecutive_failures in a row: consecutive >= k
        if (h.consecutive < k or h.consecutive % k or len(window) != window.maxlen
                or not all(window)):
            return False
        failed = calls = 0
        health = self._health
        for other in self._all:
            oh = health[other.key]
            if other is ep or oh.ejected_until is not None:
                continue
            failed += sum(oh.window)
            calls += len(oh.window)
        # at least k calls of the peers (as many as the endpoint's own evidence; gRFC
        # A50 judges only with a minimum request volume): one peer's one success says
        # nothing of how often the peers fail
        return calls >= k and (failed / calls) ** k <= _BROKEN_ODDS

    def _may_eject(self) -> bool:
        # self._ejected: the endpoints whose ejection is not over (kept by _schedule);
        # self._cap: max_ejection_percent of the endpoints, at least one (see update)
        return len(self._ejected) + 1 <= self._cap


def _neutral(code: grpc.StatusCode, latency_s: float) -> None:
    """The outcome callback of a panic pick: its outcome decides nothing."""


class StreamDone:
    """The outcome callback of a stream picked by :meth:`EjectingBalancer.pick_stream`:
    ``done(code, latency_s)`` once when the stream ends (a :data:`~meshkit.balancer.Done`),
    and ``responded()`` once at its first response message, if it has one, before that.

    A probe is decided by ``responded()`` (a success) or, when the stream ends before
    answering, by its end outcome; after ``responded()`` the end outcome counts as an
    ordinary call's in rotation. A probe with neither within ``base_ejection_s`` has its
    endpoint returned to rotation undecided (at the balancer's next pick), its ejection
    count kept: its end then counts as an ordinary call's, and a late ``responded()``
    resets that count. A stream picked in rotation counts by its end outcome only;
    ``responded()`` is passed on to the inner balancer's outcome callback when that has
    one. ``responded()`` after the end does nothing.
    """

    __slots__ = ("_balancer", "_ended", "_ep", "_h", "_inner", "_probe", "_responded")

    def __init__(self, balancer: EjectingBalancer, ep: Endpoint, h: _Health,
                 inner: Done | None) -> None:
        self._balancer = balancer
        self._ep = ep
        self._h = h
        self._inner = inner  # None: the probe (not picked by the inner balancer)
        self._probe = inner is None
        self._responded = False
        self._ended = False

    def responded(self) -> None:
        """The stream's first response message arrived (the channel calls this once)."""
        if self._responded or self._ended:
            return
        self._responded = True
        if self._probe:
            self._probe = False  # decided: its end is an ordinary call's outcome
            self._free()
            self._balancer._record(self._ep, self._h, _OK, probe=True)
            return
        if self._inner is None:  # a probe returned undecided, answering late
            self._balancer._forgive(self._ep, self._h)
            return
        inner_responded = getattr(self._inner, "responded", None)
        if inner_responded is not None:
            inner_responded()

    def __call__(self, code: grpc.StatusCode, latency_s: float) -> None:
        """The stream ended with ``code`` (``latency_s``: negative, no sample)."""
        self._ended = True
        if self._inner is not None:
            self._inner(code, latency_s)
        if self._probe:
            self._free()
            self._balancer._record(self._ep, self._h, code, probe=True)
        else:
            self._balancer._record(self._ep, self._h, code)

    def _free(self) -> None:
        """The probe is decided: its endpoint's probe slot is free."""
        h = self._h
        h.probing = False
        if h.stream_probe is self:
            h.stream_probe = None


class _PanicStreamDone(StreamDone):
    """The :class:`StreamDone` of a stream sent to an ejected endpoint by panic routing:
    neither its first response nor its end decides anything."""

    __slots__ = ()

    def responded(self) -> None:
        """Nothing to decide."""

    def __call__(self, code: grpc.StatusCode, latency_s: float) -> None:
        """Nothing to record."""
        self._ended = True
