"""P2C over peak EWMA: the default balancer (Finagle's ``p2cPeakEwma``, Linkerd's
``PeakEwma``, tower's ``p2c`` + ``PeakEwma``).

Each endpoint's load is ``rtt_estimate_s * (pending + 1)``:

* ``rtt_estimate_s`` is a *peak* EWMA of call latency: a sample above the estimate
  replaces it at once (react to slowness immediately), a sample below is blended in with
  weight ``1 - exp(-dt / decay_s)`` (recover slowly); with no samples the estimate decays
  towards zero over ``decay_s`` so an avoided endpoint gets tried again.
* an endpoint with no sample yet (added later, or never picked so far) is estimated at
  the mean estimate of its sampled peers (each decayed to now), so it competes at once
  instead of waiting for a sample it would never get (a fixed default above the peers'
  level loses every comparison and starves the endpoint for good); with no peer sampled
  yet, at ``default_rtt_s`` (Linkerd's ``default_rtt``). The mean is a running sum,
  O(1) to read (a pick stays O(1) over thousands of endpoints, a snapshot O(n)), kept
  only while some endpoint has no sample;
* while unary calls are pending on an endpoint, its load counts its estimate as it
  was when the first of them was sent, or at its last outcome since, not decayed below
  that: the decay is there to try an endpoint again that P2C avoided, and one with
  calls out is not avoided but not answering them. A
  wedged endpoint (a deadlocked handler behind a live connection) whose callers set no
  deadline gives no outcome, so without this its load fell as ``exp(-t / decay_s)``
  while its pending calls grew, and it drew every call after a minute beside a healthy
  peer (``tests/test_balancer_p2c_wedged.py``); now it draws about one. A pending
  stream (:meth:`P2C.pick_stream`: a watch whose server is silent until an event, an
  upload) holds nothing: its silence is no sign of a wedged endpoint, and held for the
  stream's life, the load of an endpoint P2C avoids for that stream's ``pending``
  count would never decay, so it would get no call for as long as the stream lasts
  (``tests/test_balancer_p2c_silent_stream.py``). Nor below the time since the
  endpoint's last outcome (counted from the first load read after it, while unary
  calls are pending): a call out that long is a latency sample in the making, as a
  cancelled one is (below). The estimate at busy time is no bound after a quiet spell,
  when every estimate has decayed towards zero: an endpoint that wedged then drew
  every call (``tests/test_balancer_p2c_wedged_after_quiet.py``);
* a ``CANCELLED`` outcome (a hedge that lost, a call its caller cancelled, an attempt
  that never left, which the channel reports with 0 s) is no latency sample: it lowers
  ``pending`` and, peak-like, raises the estimate to its latency when that exceeds it
  (the endpoint took at least that long), but never lowers it;
* an answer that says the endpoint is overloaded or broken (``RESOURCE_EXHAUSTED``,
  ``UNAVAILABLE``, ``UNKNOWN``, ``INTERNAL``, ``DATA_LOSS``) counts as at least
  ``overload_penalty_s`` of latency, so a shedding endpoint, or one failing fast on every
  call, gets less traffic instead of more for being quick;
* an endpoint added after the first discovery answer (once one of the endpoints has
  been READY: the pool hands a large first answer over ``BUILD_BATCH`` at a time, and the
  later batches are part of the cold start too) ramps up over ``slow_start_s``,
  from its first READY after it was added (from its addition if it was READY then): its
  ``weight`` grows linearly from ``slow_start_min_weight`` to 1, and when it wins a pick
  it keeps it with probability ``weight / mean weight`` (the mean over all endpoints, 1
  for those whose ramp is over), so it gets about ``weight`` of its fair share, weights
  normalised as in Envoy's slow start (which scales each host's weight by its ramp
  factor). A pick it yields goes to the least loaded of the loser, if its own ramp is
  over, and two endpoints drawn among those whose ramp is over: never to another
  newcomer (after a scale-out, a newcomer's pair is often two), nor to a slow replica
  that lost its pair. Measured (1,000s of picks, 10 ms answers, weight 0.1): 10
  endpoints added beside 10 warm ones take about 13 % of calls (Envoy's weights: 9 %;
  the rest is P2C's own pull towards the endpoints it has held back, whose estimates
  decay), 30 beside 10 about 28 % (Envoy: 23 %); checking only the first winner's
  weight gave 32 % and 65 %. With no endpoint past its ramp, nothing yields. (Dividing
  its load by the weight instead would make a winner-take-all comparison starve it.)
  Counted from its addition, the ramp of a newcomer still connecting for longer than
  ``slow_start_s`` (a server registered before its port listens, a first connection
  refused and retried on grpc's backoff) was over when it turned READY, and it took
  its full share at once, more under load (no sample: its peers' mean, nothing
  pending); Envoy starts a host's slow start at its first passed health check
  (``tests/test_hunt42_h10_p2c_slow_start_from_ready.py``).

``pending`` counts outstanding requests: a call from its pick until its response starts,
as Finagle's ``p2cPeakEwma`` and Linkerd/tower's ``PeakEwma`` (``CompleteOnResponse``)
count. A unary call's response is its end; a stream (picked with :meth:`P2C.pick_stream`,
a watch, a subscription) stops counting at its first response message (the channel calls
its outcome callback's ``responded()``), not when it ends, so an endpoint holding idle
subscriptions is not read as loaded by them and starved of calls; a client-streaming
call (an upload, also picked with :meth:`P2C.pick_stream`) counts until its response, its
end. (A stream's lifetime is no latency sample either: the channel reports a response
stream's end without one, and an upload's latency from the half-close of its request
stream, none when it ended before: its caller's sending time is no round trip.)

``pick`` draws two distinct usable endpoints at random and returns the less loaded one
(Mitzenmacher's "power of two choices"): READY ones while one is, else idle/connecting
ones, uniformly. When the first two drawn are not both READY, it draws from the READY
(then IDLE) endpoints alone, which the balancer keeps by state as their states change
(:class:`~meshkit.balancer._endpoint.StateIndex`): O(1), not a scan of every endpoint
(with 2,000 endpoints, 57 us a pick at 10 % READY and 212-366 us with none, which calls
picking again while a dial's sub-channels connected turned into event-loop stalls).

Statistics belong to an endpoint at its address: an update keeps them for the same
instance id *and* address only, so an instance that re-registered elsewhere (a restarted
process) starts as a newcomer. An endpoint that leaves the list and comes back (an
ejection by :class:`~meshkit.balancer.EjectingBalancer` and its successful probe) is a
newcomer too: no estimate from before (neither the overload penalty of the failures that
ejected it nor a fast estimate from before it broke: its sampled peers' mean, as any
newcomer's), and slow start from its return (Envoy starts a host's slow start when it
rejoins); but the calls it was sent before it left and that still run count in its
``pending`` (as Envoy's active requests and Finagle's and Linkerd's pending count are
the host's, across an ejection), and their outcomes are its first samples: it came back
read as idle beside peers with calls out
(``tests/test_hunt43_balancing_p2c_back_from_ejection.py``). The probe that brought it
back is a sample too (:meth:`P2C.observe`, which the ejecting balancer calls once the
endpoint is back): a real call, answered after the endpoint recovered, as Finagle's and
Linkerd's probes pass through the node's latency metric; an endpoint whose probe took
500 ms beside peers at 10 ms came back at its peers' mean and drew its full share
(``tests/test_hunt44_balancing_p2c_probe_sample.py``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import grpc

from meshkit._config import (
    check_clock,
    check_instance,
    check_number,
    check_rng,
    check_seconds,
)
from meshkit._fork import ForkSafeRandom
from meshkit.balancer._endpoint import Done, Endpoint, EndpointState, StateIndex

__all__ = ["P2C", "P2COptions", "StreamPending"]

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_PENALISED = frozenset({
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS,
})
_READY = EndpointState.READY
_exp = math.exp
_IDLE = EndpointState.IDLE
# time constants (decay_s) after which the prior's running sum takes now as its origin:
# its factors reach exp(50), about 5e21, far inside a float's range (exp(709))
_HORIZON = 50.0
# how long the slow-start summary (_ramps) is kept at most, as a share of slow_start_s
_RAMP_STEP = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class P2COptions:
    """Parameters of :class:`P2C`.

    Args:
        decay_s: EWMA time constant, seconds (default 10.0, as Finagle and Linkerd).
        default_rtt_s: latency assumed for an endpoint with no sample, seconds (0.03).
        overload_penalty_s: minimum latency charged for ``RESOURCE_EXHAUSTED``,
            ``UNAVAILABLE``, ``UNKNOWN``, ``INTERNAL`` and ``DATA_LOSS`` answers, seconds
            (0.25).
        slow_start_s: ramp-up window of endpoints added later (after one of the
            endpoints has been READY: none of a first answer, however many updates
            bring it), from their first READY after they were added (from their
            addition if READY then), seconds; 0 disables (5.0).
        slow_start_min_weight: weight at the start of the ramp, (0, 1] (0.1).

    Raises:
        ConfigError: a value out of range (quoted).
    """

    decay_s: float = 10.0
    default_rtt_s: float = 0.03
    overload_penalty_s: float = 0.25
    slow_start_s: float = 5.0
    slow_start_min_weight: float = 0.1

    def __post_init__(self) -> None:
        check_seconds(self, ("decay_s", "default_rtt_s", "overload_penalty_s", "slow_start_s"),
                      zero_ok=("overload_penalty_s", "slow_start_s"))
        check_number("slow_start_min_weight", self.slow_start_min_weight, low_open=True,
                     high=1.0)


class _SampledMean:
    """The prior of an endpoint with no latency sample: the mean estimate of the sampled
    endpoints, decayed to now, as a running sum (O(1) to read; P2C walked every endpoint
    for it, O(n) a pick).

    Every estimate decays alike (``rtt_s * exp(-dt / decay_s)``), so a sampled endpoint's
    estimate at ``t`` is ``share * exp(-(t - origin) / decay_s)``, its ``share``
    (``rtt_s * exp((stamp - origin) / decay_s)``) fixed until an outcome changes its
    estimate (a read that decays it in place leaves it), and the mean at ``t`` is
    ``total / count * exp(-(t - origin) / decay_s)``. ``origin`` moves to now, every share
    recomputed (O(n)), at each update of the endpoint list and once ``_HORIZON`` time
    constants have passed, so the factors stay far inside a float's range.

    Nothing asks for the prior while every endpoint has a sample, so the sum is kept only
    while one has none (``missing``): a stat's ``mean`` is this object then, else
    ``None``, and the done callback of a sampled endpoint costs one test otherwise.
    An endpoint back from an ejection (:meth:`P2C.restore`) while every other one has a
    sample makes the sum *stale* instead (only the endpoints without a sample point
    here): it is made (O(n)) at the first read of the prior, which a probe's sample
    handed over at once (:meth:`P2C.observe`) spares, so that a storm of returns costs
    O(1) each."""

    __slots__ = ("count", "decay_s", "default_rtt_s", "missing", "origin", "stale", "stats",
                 "total")

    def __init__(self, opts: P2COptions) -> None:
        self.decay_s = opts.decay_s
        self.default_rtt_s = opts.default_rtt_s
        self.stats: dict[str, _Stat] = {}
        self.origin = 0.0
        self.total = 0.0
        self.count = 0  # endpoints with a sample
        self.missing = 0  # endpoints without one
        # the sum is not kept (made at the next read): only those without a sample point
        # here (`missing` of them)
        self.stale = False

    def reset(self, stats: dict[str, _Stat], now: float) -> None:
        """Recompute the sum over ``stats`` with its origin at ``now`` (O(n))."""
        self.stats = stats
        self.origin = now
        self.stale = False
        sampled = [st for st in stats.values() if st.rtt_s >= 0]
        self.count = len(sampled)
        self.missing = len(stats) - len(sampled)
        kept = self if self.missing else None
        for st in stats.values():
            st.mean = kept
        total, decay_s = 0.0, self.decay_s
        for st in sampled:
            st.share = st.rtt_s * math.exp((st.stamp - now) / decay_s)
            total += st.share
        self.total = total

    def sampled(self, st: _Stat, now: float, first: bool) -> None:
        """``st``'s estimate changed at ``now`` (its first sample when ``first``)."""
        if self.stale:  # (only those without a sample point here: `first`)
            st.mean = None
            self.missing -= 1
            if not self.missing:
                self.stale = False  # every endpoint sampled: nothing asks for the prior
            return
        dt = now - self.origin
        if dt > _HORIZON * self.decay_s:
            self.reset(self.stats, now)
            return
        share = st.rtt_s * math.exp(dt / self.decay_s)
        if first:
            self.count += 1
            self.missing -= 1
            if not self.missing:  # every endpoint sampled: nothing asks for the prior
                for other in self.stats.values():
                    other.mean = None
                return
        else:
            self.total -= st.share
        self.total += share
        st.share = share

    def at(self, now: float) -> float:
        """The mean decayed to ``now``, else ``default_rtt_s`` with no endpoint sampled."""
        if self.stale:
            self.reset(self.stats, now)
        if not self.count:
            return self.default_rtt_s
        dt = now - self.origin
        if dt > _HORIZON * self.decay_s:
            self.reset(self.stats, now)
            dt = 0.0
        mean = self.total / self.count * math.exp(-dt / self.decay_s)
        return mean if mean > 0.0 else 0.0  # (rounding of a sum of decayed-out shares)


class _Stat:
    """Load statistics of one endpoint."""

    __slots__ = ("added_at", "address", "clock", "decay_s", "floor", "mean", "penalty_s",
                 "pending", "prior", "rtt_s", "share", "since", "stamp", "streams")

    def __init__(self, opts: P2COptions, clock: Callable[[], float], added_at: float,
                 address: str, prior: Callable[[float], float]) -> None:
        self.address = address  # the statistics are this address's
        self.prior = prior  # estimate while there is no sample (P2C._prior)
        self.clock = clock
        self.decay_s = opts.decay_s
        self.penalty_s = opts.overload_penalty_s
        self.rtt_s = -1.0  # no sample yet
        self.stamp = added_at
        # while unary calls are pending, the load counts at least this (P2C.load), not
        # the estimate decayed since: the estimate when the first of them was sent (set
        # at the first load read after that; -1: not read yet) or at its last outcome
        # since
        self.floor = -1.0
        # while unary calls are pending, the load counts at least the time since this:
        # the first load read after the last outcome or the first of them (-1: none yet)
        self.since = -1.0
        self.pending = 0
        # of `pending`, the streams (StreamPending): they hold no floor (a silent watch)
        self.streams = 0
        self.added_at = added_at
        # the running sum of the prior while some endpoint has no sample, and this
        # endpoint's share in it (_SampledMean)
        self.mean: _SampledMean | None = None
        self.share = 0.0

    def estimate(self, now: float, default_rtt_s: float) -> float:
        """The decayed RTT estimate at ``now``, seconds (:meth:`P2C.pick` decays its two
        draws' inline: change both)."""
        if self.rtt_s < 0:
            return default_rtt_s
        dt = now - self.stamp
        if dt > 0:
            self.rtt_s *= math.exp(-dt / self.decay_s)
            self.stamp = now
        return self.rtt_s

    def held(self, rtt: float, now: float) -> float:
        """``rtt`` (this endpoint's estimate at ``now``) as its load counts it: while
        unary calls are pending (streams do not count), not below the estimate when the
        first of them was sent or at its last outcome since, nor below the time since
        that outcome or first call (each from the first read after it, which sets it)."""
        if self.pending > self.streams:
            floor = self.floor
            if floor < 0:
                self.floor = floor = rtt
            since = self.since
            if since < 0:
                self.since = now
            elif now - since > floor:
                floor = now - since
            if rtt < floor:
                return floor
        return rtt

    def take(self) -> None:
        """One more call pending; the first with no unary call pending has its floor set
        at the next load read (:meth:`held`)."""
        if self.pending == self.streams:  # (`since` is -1: the last outcome reset it)
            self.floor = -1.0
        self.pending += 1

    def done(self, code: grpc.StatusCode, latency_s: float) -> None:
        """Record one outcome (the balancer's ``done`` callback); a ``CANCELLED`` one only
        raises the estimate to its latency, never lowers it."""
        self.pending -= 1
        self.since = -1.0  # an outcome: the time without one counts from the next read
        # `is not _OK` first: an Enum hashes in Python, and most calls succeed
        if code is not _OK:
            if code is _CANCELLED:
                self._cancelled(latency_s)
                return
            if code in _PENALISED and latency_s < self.penalty_s:
                latency_s = self.penalty_s
        if latency_s < 0:  # an outcome without a latency sample (a stream's: see Done)
            return
        now = self.clock()
        rtt = self.rtt_s
        # the floor is the new estimate (held() reads it while calls are pending)
        if latency_s > rtt:  # peak: jump up at once (the first sample too: rtt_s is -1)
            self.rtt_s = self.floor = latency_s
        else:
            w = _exp(-max(0.0, now - self.stamp) / self.decay_s)
            self.rtt_s = self.floor = rtt * w + latency_s * (1.0 - w)
        self.stamp = now
        if self.mean is not None:  # some endpoint has no sample: keep the prior's sum
            self.mean.sampled(self, now, rtt < 0)

    def _cancelled(self, latency_s: float) -> None:
        """A cancelled call took at least ``latency_s``: the estimate rises to it if it
        is higher (an endpoint with no sample compared with its prior), else stays."""
        if latency_s <= 0:
            return
        now = self.clock()
        rtt = self.rtt_s
        current = self.estimate(now, 0.0) if rtt >= 0 else self.prior(now)
        if latency_s > current:
            self.rtt_s = self.floor = latency_s
            self.stamp = now
            if self.mean is not None:
                self.mean.sampled(self, now, rtt < 0)


class StreamPending:
    """The outcome callback of a stream picked by :meth:`P2C.pick_stream`: ``responded()``
    at its first response message takes it off its endpoint's ``pending`` (once);
    ``done(code, latency_s)`` when it ends hands its outcome to the pick's own ``done``
    (a failure's overload penalty included), which takes it off ``pending`` only if
    ``responded()`` did not.

    Args:
        stat: the endpoint's statistics.
        done: the outcome callback :meth:`P2C.pick` returned for the stream (a
            subclass's own included).
    """

    __slots__ = ("_done", "_pending", "_stat")

    def __init__(self, stat: _Stat, done: Done) -> None:
        self._stat = stat
        self._done = done
        self._pending = True
        stat.streams += 1  # a pending stream holds no floor (_Stat.held)

    def responded(self) -> None:
        """The stream's first response message arrived: no longer a pending request."""
        if self._pending:
            self._pending = False
            self._stat.pending -= 1
            self._stat.streams -= 1

    def __call__(self, code: grpc.StatusCode, latency_s: float) -> None:
        """The stream ended with ``code`` (``latency_s``: negative, no sample)."""
        if not self._pending:
            self._stat.pending += 1  # taken off at responded(): done takes it off again
        else:
            self._stat.streams -= 1
        self._pending = False
        self._done(code, latency_s)


class _ReadyWatch(StateIndex):
    """The P2C's endpoints by state, which also starts the slow start of a newcomer that
    was not READY when added (``waiting``, set by :meth:`P2C.update`) at its first
    READY: at a state change, nothing per pick. It holds no reference to its P2C (the
    endpoints hold their indexes: no cycle for the garbage collector)."""

    __slots__ = ("clock", "restarted", "served", "waiting")

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        # newcomers not READY yet: key -> their statistics, whose ramp starts at READY
        self.waiting: dict[str, _Stat] = {}
        self.restarted = False  # a ramp started since P2C._ramps last summed them
        # a member has been READY: the cold start is over, an endpoint added now ramps
        # (P2C.update; a first answer comes in several updates, BUILD_BATCH at a time)
        self.served = False

    def _moved(self, ep: Endpoint, old: EndpointState) -> None:
        super()._moved(ep, old)
        if not self.served and ep._state is _READY and ep in self:
            self.served = True
        if self.waiting and ep._state is _READY and ep in self:
            st = self.waiting.pop(ep.key, None)
            if st is not None:
                st.added_at = self.clock()
                self.restarted = True


class P2C:
    """Power of two choices over peak-EWMA load; see the module docstring.

    Args:
        options: :class:`P2COptions` (defaults apply when omitted).
        rng: random source (default a new ``random.Random``, reseeded in a child made by
            ``os.fork()``, so workers forked after the channel was dialled do not pick
            in lock-step); inject a seeded one in tests (never reseeded).
        clock: monotonic seconds (default ``time.monotonic``).

    Raises:
        ConfigError: ``options`` is no :class:`P2COptions` (an ``OutlierOptions``, whose
            place is ``DialOptions.outlier``), ``rng`` no random source (a seed given for
            ``random.Random(seed)``) or ``clock`` not callable (``time.monotonic()``: its
            reading); quoted.
    """

    __slots__ = ("_by_state", "_clock", "_cold", "_eps", "_gone", "_mean", "_mean_weight",
                 "_opts", "_ramps_until", "_rng", "_settled", "_stats")

    def __init__(self, options: P2COptions | None = None, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_instance("options", options, P2COptions)
        check_rng("rng", rng, ("random",))
        check_clock("clock", clock, wall=False)
        self._opts = options or P2COptions()
        self._rng = rng if rng is not None else ForkSafeRandom()
        self._clock = clock
        self._eps: tuple[Endpoint, ...] = ()
        # the endpoints by state (kept by their state's setter): a draw when the first
        # two drawn are not both READY is O(1), not a scan of every endpoint
        self._by_state = _ReadyWatch(clock)
        self._stats: dict[str, _Stat] = {}
        self._mean = _SampledMean(self._opts)
        # the endpoints whose slow start is over and the mean weight, until _ramps_until
        # (_ramps)
        self._settled: tuple[Endpoint, ...] = ()
        self._mean_weight = 1.0
        self._ramps_until = -math.inf
        # the pool says the updates belong to the first discovery answer (cold_start)
        self._cold = False
        # statistics of endpoints that left (an ejection) with calls still out, by key:
        # an endpoint back at its address takes their count up again (update)
        self._gone: dict[str, _Stat] = {}

    def cold_start(self, on: bool) -> None:
        """The channel's pool says whether the next updates belong to the first discovery
        answer (``True`` before its first batch, ``False`` once its last batch is in):
        none of its endpoints is slow-started, whether or not one of them was READY
        before a later batch came (the pool builds a large answer ``BUILD_BATCH`` a
        turn of the event loop). Without the pool's word (a balancer used alone), an
        endpoint added before any endpoint was READY is none either.

        Args:
            on: ``True`` while the first answer is coming in."""
        self._cold = bool(on)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list; statistics of endpoints that stay (same instance id
        and address) are kept, an endpoint at a new address starts as a newcomer."""
        now = self._clock()
        # Endpoints of the first answer are not slow-started: there is nothing to protect.
        # Nor those added while no endpoint has been READY yet: the pool hands a large
        # first answer over in batches (BUILD_BATCH a turn of the loop), and ramping the
        # later ones sent the first batch's (the same for every client) twice its share.
        # The pool's word (cold_start) covers a first batch that connected before the
        # next one came.
        seeded = self._by_state.served and not self._cold
        start = now if seeded else now - self._opts.slow_start_s
        # a newcomer not READY yet starts its ramp at its first READY (_ReadyWatch)
        ramps = seeded and self._opts.slow_start_s > 0
        waiting = self._by_state.waiting
        waits: dict[str, _Stat] = {}
        stats = {}
        gone = self._gone
        for ep in endpoints:
            st = self._stats.get(ep.key)
            if st is None or st.address != ep.address:
                back = gone.pop(ep.key, None) if gone else None
                if back is not None and back.address == ep.address and back.pending:
                    # back (from an ejection) with calls out: a newcomer whose count
                    # goes on, their outcomes its first samples (the done callbacks
                    # they hold are this object's)
                    st = back
                    st.rtt_s = st.floor = st.since = -1.0
                    st.stamp = st.added_at = start
                else:
                    st = _Stat(self._opts, self._clock, start, ep.address, self._prior)
                if ramps and ep.state is not _READY:
                    waits[ep.key] = st
            elif waiting.get(ep.key) is st:  # still waiting for its first READY
                waits[ep.key] = st
            stats[ep.key] = st
        for key, st in self._stats.items():
            if stats.get(key) is not st:  # gone (or replaced): a call that ends after it
                st.mean = None  # left (draining) must not move the others' running sum
                if st.pending and key not in stats:
                    gone[key] = st  # calls out: counted again if it comes back
        if gone:  # (those whose calls have all ended since: nothing to carry)
            for key in [k for k, st in gone.items() if not st.pending or k in stats]:
                del gone[key]
        self._stats = stats
        self._mean.reset(stats, now)
        self._eps = tuple(endpoints)
        self._by_state.waiting = waits
        self._by_state.track(self._eps)
        self._ramps_until = -math.inf  # _ramps: made afresh
        if self._by_state.count(_READY):  # (READY when added: no _moved)
            self._by_state.served = True

    def remove(self, ep: Endpoint) -> None:
        """Take ``ep`` out of the list, as :meth:`update` with the list without it would
        (the optional ``remove`` of :class:`~meshkit.balancer.Balancer`:
        :class:`~meshkit.balancer.EjectingBalancer` hands an ejected endpoint over so):
        its statistics leave (kept aside while calls sent to it are out, as
        :meth:`update` keeps them), the others' stay. O(1) but for a copy of the list
        (in C), not :meth:`update`'s O(n) (5.3 ms at 4,000 endpoints, every ejection of
        a storm); O(n) only when it was the last endpoint with no latency sample (the
        prior's running sum is dropped, as a first sample drops it). An endpoint not in
        the list is ignored.

        Args:
            ep: the endpoint to take out (the object in the list)."""
        eps = self._eps
        stats = self._stats
        st = stats.get(ep.key)
        if st is None or ep not in self._by_state:
            return
        if len(stats) != len(eps):  # a key listed twice: as update does it
            self.update([e for e in eps if e is not ep])
            return
        i = eps.index(ep)
        self._eps = eps[:i] + eps[i + 1:]
        del stats[ep.key]
        mean = self._mean
        if st.mean is not None and mean.stale:  # (one without a sample: see _SampledMean)
            mean.missing -= 1
            if not mean.missing:
                mean.stale = False
        elif st.mean is not None:  # the prior's running sum is kept: take its part out
            if st.rtt_s >= 0:
                mean.count -= 1
                mean.total -= st.share
            else:
                mean.missing -= 1
                if not mean.missing:  # every endpoint left sampled (as _SampledMean)
                    for other in stats.values():
                        other.mean = None
        st.mean = None  # a call that ends after it left must not move the sum
        if st.pending:
            self._gone[ep.key] = st  # calls out: counted again if it comes back
        self._by_state.waiting.pop(ep.key, None)
        self._by_state.discard(ep)
        self._ramps_until = -math.inf  # _ramps: made afresh

    def restore(self, ep: Endpoint, at: int) -> None:
        """Put ``ep`` back in the list at position ``at``, as :meth:`update` with the list
        so would (the optional ``restore`` of :class:`~meshkit.balancer.Balancer`:
        :class:`~meshkit.balancer.EjectingBalancer` hands an endpoint back from an
        ejection so): a newcomer (module docstring: slow start from its return, no
        estimate from before, the calls it still has out counted). O(1) but for a copy
        of the list (in C); the prior's running sum, when every other endpoint has a
        latency sample, is made at the next read of the prior (O(n) then), which a
        probe's sample (:meth:`observe`) handed over at once spares. An endpoint in the
        list already is moved there by :meth:`update`.

        Args:
            ep: the endpoint to put back.
            at: its index in the new list, 0 to ``len(list)`` (clamped)."""
        eps = self._eps
        at = max(0, min(at, len(eps)))
        stats = self._stats
        if ep.key in stats or len(stats) != len(eps):  # as update does it
            rest = [e for e in eps if e is not ep]
            self.update([*rest[:at], ep, *rest[at:]])
            return
        now = self._clock()
        seeded = self._by_state.served and not self._cold
        start = now if seeded else now - self._opts.slow_start_s
        gone = self._gone
        back = gone.pop(ep.key, None) if gone else None
        if back is not None and back.address == ep.address and back.pending:
            st = back  # back with calls out (as update)
            st.rtt_s = st.floor = st.since = -1.0
            st.stamp = st.added_at = start
        else:
            st = _Stat(self._opts, self._clock, start, ep.address, self._prior)
        if seeded and self._opts.slow_start_s > 0 and ep.state is not _READY:
            self._by_state.waiting[ep.key] = st
        stats[ep.key] = st
        self._eps = (*eps[:at], ep, *eps[at:])
        mean = self._mean
        # one more without a sample: the running sum, kept while one has none, goes on;
        # else it is made at the next read of the prior (stale: _SampledMean)
        if not mean.missing:
            mean.stale = True
            mean.stats = stats
        mean.missing += 1
        st.mean = mean
        self._by_state.add(ep)
        self._ramps_until = -math.inf
        if self._by_state.count(_READY):
            self._by_state.served = True

    def observe(self, ep: Endpoint, code: grpc.StatusCode, latency_s: float) -> None:
        """Record the outcome of a call sent to ``ep`` not through :meth:`pick` (the
        optional ``observe`` of :class:`~meshkit.balancer.Balancer`: the half-open probe
        of :class:`~meshkit.balancer.EjectingBalancer`, sent while ``ep`` was out of the
        list and handed over once it is back), as a picked call's outcome is recorded:
        a latency sample (an overload answer's penalty included), none for a negative
        ``latency_s`` or a ``CANCELLED`` one that does not raise the estimate. An
        endpoint not in the list (or at another address) is ignored. O(1).

        Args:
            ep: the endpoint the call went to.
            code: its status code.
            latency_s: its latency, seconds (negative: no sample)."""
        st = self._stats.get(ep.key)
        if st is None or st.address != ep.address:
            return
        st.pending += 1  # (done takes the call off pending: it was never counted)
        st.done(code, latency_s)

    def load(self, ep: Endpoint, now: float | None = None) -> float:
        """The load score of ``ep`` (seconds of expected wait), as :meth:`pick` compares."""
        st = self._stats[ep.key]
        t = self._clock() if now is None else now
        rtt = st.estimate(t, 0.0) if st.rtt_s >= 0 else self._prior(t)
        return st.held(rtt, t) * (st.pending + 1)

    def _prior(self, now: float) -> float:
        """The estimate of an endpoint with no sample: its sampled peers' mean estimate
        (each decayed to ``now``), else ``default_rtt_s``. O(1): a running sum
        (:class:`_SampledMean`), kept while some endpoint has no sample."""
        mean = self._mean
        if not mean.missing:  # not kept (nobody lacks a sample): summed afresh, O(n)
            mean.reset(self._stats, now)
        return mean.at(now)

    def weight(self, ep: Endpoint, now: float | None = None) -> float:
        """Slow-start weight of ``ep`` in (0, 1] (module docstring): a pick it wins is
        kept with probability this over the mean weight of the endpoints. A newcomer's
        ramp counts from its first READY after it was added (from its addition if it
        was READY then)."""
        ss = self._opts.slow_start_s
        if ss <= 0:
            return 1.0
        age = (self._clock() if now is None else now) - self._stats[ep.key].added_at
        return 1.0 if age >= ss else max(self._opts.slow_start_min_weight, age / ss)

    def _draw(self, exclude: Collection[Endpoint], other: Endpoint | None,
              idle_ok: bool = True, among: Sequence[Endpoint] | None = None,
              also: Endpoint | None = None) -> Endpoint | None:
        """A random READY endpoint of ``among`` (default: all) that is not ``other`` nor
        ``also`` nor excluded (``exclude`` tested with ``in`` only: a hedged call's holds
        endpoints its iteration does not give, see :class:`~meshkit.balancer.Balancer`);
        without one, an idle/connecting one when ``idle_ok``, else ``None``. Uniform over
        those. Among all endpoints, drawn from the READY (then IDLE) ones only
        (:class:`~meshkit.balancer._endpoint.StateIndex`): O(1) while few are excluded,
        O(READY) at most, however few of many endpoints are READY."""
        rnd = self._rng.random
        if among is None:
            by_state = self._by_state
            for of_state in (by_state.of(_READY), by_state.of(_IDLE)) if idle_ok else (
                    by_state.of(_READY),):
                n = len(of_state)
                if not n:
                    continue
                for _ in range(4 if n > 2 else 2):
                    ep = of_state[int(rnd() * n)]
                    if ep is not other and ep is not also and not (exclude and ep in exclude):
                        return ep
                usable = [e for e in of_state if e is not other and e is not also
                          and e not in exclude]
                if usable:
                    return usable[int(rnd() * len(usable))]
            return None
        eps = among
        n = len(eps)
        for _ in range(4 if n > 2 else 2):
            ep = eps[int(rnd() * n)]
            if (ep is not other and ep is not also and ep.state is _READY
                    and not (exclude and ep in exclude)):
                return ep
        ready = [e for e in eps if e.state is _READY and e is not other and e is not also
                 and e not in exclude]
        if not ready and idle_ok:
            ready = [e for e in eps if e.state is _IDLE and e is not other and e is not also
                     and e not in exclude]
        return ready[int(rnd() * len(ready))] if ready else None

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """The less loaded of two random usable endpoints, or ``None`` if none is usable.

        ``exclude`` is avoided while another usable endpoint exists; ``key`` is ignored.
        """
        eps = self._eps
        n = len(eps)
        if n > 1 and not exclude:
            # the common case, inline: two distinct endpoints drawn, both ready
            rnd = self._rng.random
            i, j = int(rnd() * n), int(rnd() * (n - 1))
            a, b = eps[i], eps[j + 1 if j >= i else j]
            if a._state is _READY and b._state is _READY:  # (the slot: no frame)
                now = self._clock()
                stats = self._stats
                sa, sb = stats[a.key], stats[b.key]
                # sa.estimate(now, 0.0) if sa.rtt_s >= 0 else self._prior(now), the
                # estimate's decay inline (two frames less a pick): change both
                la = sa.rtt_s
                if not la >= 0:  # no sample (as the test it replaces: NaN too)
                    la = self._prior(now)
                elif (dt := now - sa.stamp) > 0:
                    sa.rtt_s = la = la * _exp(-dt / sa.decay_s)
                    sa.stamp = now
                lb = sb.rtt_s
                if not lb >= 0:
                    lb = self._prior(now)
                elif (dt := now - sb.stamp) > 0:
                    sb.rtt_s = lb = lb * _exp(-dt / sb.decay_s)
                    sb.stamp = now
                # as load() (_Stat.held): pending unary calls stop the decay
                pa, pb = sa.pending, sb.pending
                if pa > sa.streams:
                    la = sa.held(la, now)
                if pb > sb.streams:
                    lb = sb.held(lb, now)
                la *= pa + 1
                lb *= pb + 1
                if lb < la:
                    a, b, sa = b, a, sb
                ss = self._opts.slow_start_s
                if ss > 0 and now - sa.added_at < ss:
                    return self._yield_or_keep(a, b, exclude, now)
                if sa.pending == sa.streams:
                    sa.floor = -1.0  # (_Stat.take, inline)
                sa.pending += 1
                return a, sa.done
        elif n == 1:
            # one endpoint: nothing to compare, and an excluded one is taken anyway
            # (exclusion only steers a pick to another usable endpoint)
            only = eps[0]
            if only.state is _READY:
                st = self._stats[only.key]
                if st.pending == st.streams:
                    st.floor = -1.0  # (_Stat.take, inline)
                st.pending += 1
                return only, st.done
        elif not n:
            return None
        first = self._draw(exclude, None)
        if first is None:
            if exclude:
                return self.pick(key, ())
            return None
        # a READY first choice is compared with READY ones only: an endpoint still
        # connecting (no pending calls, no samples) would win and hold the call
        second = self._draw(exclude, first, first.state is not _READY) if n > 1 else None
        if second is not None:
            now = self._clock()
            if self.load(second, now) < self.load(first, now):
                first, second = second, first
            return self._yield_or_keep(first, second, exclude, now)
        st = self._stats[first.key]
        st.take()
        return first, st.done

    def pick_stream(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, StreamPending] | None:
        """:meth:`pick` for a streaming call: its outcome callback
        (:class:`StreamPending`) also has ``responded()``, which the channel calls at a
        response stream's first message; the stream stops counting as pending then (an
        upload, which never calls it, at its end; see the module docstring). ``key`` is
        ignored; ``exclude`` as for :meth:`pick`.

        Returns:
            ``(endpoint, done)``, or ``None`` if no endpoint is usable.
        """
        got = self.pick(key, exclude)
        if got is None:
            return None
        ep, done = got
        return ep, StreamPending(self._stats[ep.key], done)

    def _yield_or_keep(self, a: Endpoint, b: Endpoint, exclude: Collection[Endpoint],
                       now: float) -> tuple[Endpoint, Done]:
        """Pick the winner ``a`` over the loser ``b``, unless ``a`` is slow-starting and
        yields the pick: it keeps it with probability its weight over the mean weight
        of the endpoints, else :meth:`_redraw` chooses (module docstring)."""
        w = self.weight(a, now)
        if w < 1.0:
            settled, mean_weight = self._ramps(now)
            if settled and self._rng.random() * mean_weight >= w:
                a = self._redraw(a, b, settled, exclude, now)
        st = self._stats[a.key]
        st.take()
        return a, st.done

    def _redraw(self, a: Endpoint, b: Endpoint, settled: Sequence[Endpoint],
                exclude: Collection[Endpoint], now: float) -> Endpoint:
        """Who takes the pick the slow-starting winner ``a`` yielded: the least loaded
        of the loser ``b``, when its ramp is over, and two endpoints drawn among those
        whose ramp is over (``settled``; not excluded, nor ``b``; READY ones only when
        ``a`` is READY), else ``a`` itself."""
        # (not a tuple of exclude's items: iterating a hedged call's exclude leaves out
        # the endpoints its sibling attempts wait on, which `in` sees)
        c = self._draw(exclude, b, a.state is not _READY, settled)
        d = (self._draw(exclude, c, c.state is not _READY, settled, also=b)
             if c is not None else None)
        best, least = a, math.inf
        if now - self._stats[b.key].added_at >= self._opts.slow_start_s:
            best, least = b, self.load(b, now)
        for e in (c, d):
            if e is not None:
                load = self.load(e, now)
                if load < least:
                    best, least = e, load
        return best

    def _ramps(self, now: float) -> tuple[tuple[Endpoint, ...], float]:
        """The endpoints whose slow start is over at ``now``, and the mean weight of all
        endpoints. Kept until the next ramp ends, the next update, a newcomer's ramp
        starting at its first READY (_ReadyWatch), or ``_RAMP_STEP`` of
        ``slow_start_s`` (a weight moves by 0.02 at most meanwhile), so a pick a newcomer
        wins reads them in O(1); remade in O(n)."""
        watch = self._by_state
        if now < self._ramps_until and not watch.restarted:
            return self._settled, self._mean_weight
        watch.restarted = False
        ss = self._opts.slow_start_s
        low = self._opts.slow_start_min_weight
        settled = []
        total = 0.0
        upcoming = now + ss * _RAMP_STEP
        stats = self._stats
        for ep in self._eps:
            added_at = stats[ep.key].added_at
            age = now - added_at
            if age >= ss:
                settled.append(ep)
                total += 1.0
            else:
                total += max(low, age / ss)
                upcoming = min(upcoming, added_at + ss)
        self._settled = tuple(settled)
        self._mean_weight = total / len(self._eps) if self._eps else 1.0
        self._ramps_until = upcoming
        return self._settled, self._mean_weight

    def snapshot(self) -> list[dict[str, float | int | str]]:
        """Per-endpoint ``{"instance_id", "rtt_ms", "pending", "load_ms"}`` for debugging
        (O(n): the prior is read once)."""
        now = self._clock()
        stats = self._stats
        prior: float | None = None
        rows: list[dict[str, float | int | str]] = []
        for ep in self._eps:
            st = stats[ep.key]
            if st.rtt_s >= 0:
                rtt = st.estimate(now, 0.0)
            else:
                if prior is None:
                    prior = self._prior(now)
                rtt = prior
            rows.append({"instance_id": ep.key, "rtt_ms": round(rtt * 1e3, 3),
                         "pending": st.pending,
                         "load_ms": round(st.held(rtt, now) * (st.pending + 1) * 1e3, 3)})
        return rows
