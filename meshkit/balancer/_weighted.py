"""Weighted round robin and ring-hash balancers (pure policy, no I/O)."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
import time
from collections.abc import Callable, Collection, Sequence

from meshkit._config import check_clock, check_int, check_rng
from meshkit._fork import ForkSafeRandom, reset_in_forked_child
from meshkit.balancer._endpoint import Done, Endpoint, EndpointState, StateIndex, noop_done
from meshkit.balancer._slow_start import Ramped, SlowStart, check_slow_start

__all__ = ["RingHash", "WeightedRoundRobin"]

_FAILING = EndpointState.FAILING
_READY = EndpointState.READY
_IDLE = EndpointState.IDLE
_MAX_RING = 8 * 1024 * 1024  # gRPC's limit of ring_hash's max_ring_size (gRFC A42)
_LCM_MAX = 1 << 46  # a weights' multiple this large makes a cycle of 2**62 turns: floats


class WeightedRoundRobin(Ramped):
    """Weighted round robin over ``Instance.weight`` by earliest-deadline-first scheduling
    (Envoy's ``EdfScheduler``): an endpoint of weight ``w`` has a turn every ``1/w`` of a
    cycle, and each pick takes the endpoint whose turn is due first (ties: the one queued
    first). An endpoint of weight 3 next to one of weight 1 gets 3 of every 4 calls, one b
    between every three a's (never a burst of either), and every endpoint gets exactly
    its weight's share of each full cycle. A pick costs O(log n) (a heap), not O(n) as the
    smooth weighted round robin this replaced (nginx's, which scored every endpoint on
    every pick: 9-11.5 us per pick over 100 endpoints in ``python -m benchmarks
    --scenarios fanout``, 0.6 us now).

    Weights come from the registry (Consul's ``Weights.Passing``). An endpoint found
    ``FAILING`` when its turn comes leaves the schedule until it is usable again, then
    rejoins one turn of its own weight later (no burst of the picks it missed; those out
    are kept by state, so a pick reads none of them while they fail); ``exclude`` is
    avoided while another endpoint is usable. Keeps no latency statistics (``done`` is a
    no-op). Turns are integers (a cycle is 2**16 times
    the least common multiple of the weights while that stays below 2**62, else a float),
    so shares stay exact however long a channel runs. A new endpoint's first turn comes
    at a random point of its first interval, so that many clients started together do
    not all send their first calls to the same endpoints (Envoy seeds its scheduler with
    random picks; :class:`RoundRobin` starts at a random position). An endpoint still
    connecting is taken only when no READY one is usable (as :class:`RoundRobin`), also
    among excluded ones (every usable endpoint excluded: an excluded READY one first);
    its turn passes meanwhile. With none READY (a dial's sub-channels connecting), a pick
    takes the first connecting one due and leaves the rest of the schedule unread (the
    endpoints are kept by state as their states change): O(log n), not O(n log n). With
    one or a few READY, a connecting one met at its turn is set aside (kept by state)
    until it is READY, then due at the turn it was given, or one turn of its own weight
    after the last pick if that has passed (as FAILING ones rejoin: no burst), or until
    none is READY: a pick reads a few states, O(log n) (pushed back one turn on, the
    connecting ones came due together again at every pick: 2,000 endpoints, one READY,
    3,999 states read and 1.3 ms a pick; 0.6 us now). A retry that excludes every
    READY one takes the first connecting one due, those set aside included (looked
    up by their turns, no state read: 5 states read, not 7,900, for a pick and its
    retry). The picks among READY endpoints are those of before (while their states
    hold).

    In a child made by ``os.fork()`` a balancer with its default random source draws
    every endpoint's next turn afresh (at a random point of its interval, as a newcomer):
    workers forked from one process otherwise followed the parent's schedule, each
    sending the same endpoints its calls in the same order.

    Slow start (off by default, as Envoy's ``slow_start_config``): with ``slow_start_s``
    > 0, an endpoint added after the first discovery answer ramps up over
    ``slow_start_s`` from its first READY, with :class:`~meshkit.balancer.P2C`'s option
    names and rules: at its turn it takes the pick about ``weight`` of the times and
    lets the turn pass unused otherwise (its next turn one step on), so its share is its
    registry weight times its ramp weight over the sum of those (Envoy scales a host's
    scheduler weight by its ramp factor); an endpoint back from an ejection ramps again
    (:mod:`meshkit.balancer._slow_start`).

    Args:
        rng: random source for the first turns (default: a new ``random.Random()``,
            reseeded in a forked child; one given is never reseeded and its schedule is
            kept there).
        slow_start_s: ramp window of endpoints added later, seconds, >= 0; 0 (default)
            disables.
        slow_start_min_weight: weight at the start of the ramp, (0, 1] (default 0.1).
        clock: monotonic seconds for the ramps (default ``time.monotonic``).

    Raises:
        ConfigError: ``rng`` is no random source (a seed given for
            ``random.Random(seed)``, the class itself), a slow-start value out of range
            or ``clock`` not callable; quoted.
    """

    __slots__ = ("__weakref__", "_aside", "_aside_by_state", "_by_state", "_heap", "_last",
                 "_ramp", "_rng", "_seq", "_steps")

    def __init__(self, rng: random.Random | None = None, *, slow_start_s: float = 0.0,
                 slow_start_min_weight: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_rng("rng", rng, ("random",))
        check_slow_start(slow_start_s, slow_start_min_weight)
        check_clock("clock", clock, wall=False)
        # the newcomers' ramps (None: no slow start)
        self._ramp = (SlowStart(slow_start_s, slow_start_min_weight, clock)
                      if slow_start_s > 0 else None)
        self._rng = rng if rng is not None else ForkSafeRandom()
        # (turn due, queue order, endpoint): the heap's minimum is the next endpoint due
        self._heap: list[tuple[float, int, Endpoint]] = []
        self._steps: dict[str, float] = {}  # key -> turns between two of its picks
        # out of the heap: found FAILING at their turn (None), or connecting at a turn a
        # READY one took (the turn they were given: _rejoin), until READY or needed
        self._aside: dict[Endpoint, tuple[float, int, Endpoint] | None] = {}
        self._aside_by_state = StateIndex()  # the same endpoints, by state
        # the turn of the last pick (a READY one whenever some are set aside with a turn)
        self._last: tuple[float, int] | tuple[float, int, Endpoint] = (0, -1)
        self._seq = 0
        # the endpoints by state (kept by their state's setter): with none READY, a pick
        # stops at the first one due, not after popping the whole heap
        self._by_state = StateIndex()
        if rng is None:
            _wrr_forked.add(self)

    def _forget_parent(self) -> None:
        """In a forked child: every endpoint's next turn drawn afresh (see the class)."""
        self._rng.seed()  # (ForkSafeRandom's own hook may not have run yet)
        eps = [ep for _, _, ep in sorted(self._heap, key=lambda entry: entry[1])]
        eps += self._aside
        self._heap = []
        self._set_aside_none()
        self.update(eps)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list. Endpoints that stay keep their place in the cycle
        (the part of a turn they still had to wait), newcomers are due after one turn of
        their own weight at most (a random point of it)."""
        if self._ramp is not None:
            self._ramp.update(endpoints)
        # (the connecting ones set aside at the turn they would have now)
        entries = self._heap + [self._turn(e) for e in self._aside.values() if e is not None]
        now = min(entries)[0] if entries else 0
        left = {ep.key: (due - now) / self._steps[ep.key] for due, _, ep in entries}
        weights = [ep.instance.weight for ep in endpoints]
        # the weights' least common multiple, times 2**16 so that a first turn can fall
        # at a random point of a step even when every weight is 1; given up on once past
        # the bound (math.lcm(*weights) of large weights grows to thousands of bits, each
        # step costing its size: quadratic in endpoints)
        lcm = 1
        for w in weights:
            lcm = math.lcm(lcm, w)
            if lcm >= _LCM_MAX:
                break
        cycle: float = lcm << 16
        if cycle >= 1 << 62:
            cycle = 1.0  # float turns: shares drift by rounding only
        self._steps = steps = {ep.key: cycle / w if isinstance(cycle, float) else cycle // w
                               for ep, w in zip(endpoints, weights, strict=True)}
        heap = []
        for i, ep in enumerate(endpoints):
            step = steps[ep.key]
            frac = left.get(ep.key)
            if frac is None:  # a newcomer: its first turn within its first interval
                frac = 1.0 - self._rng.random()  # (0, 1]
            due = max(frac * step, 0)
            heap.append((max(round(due), 1) if isinstance(step, int) else due, i, ep))
        heapq.heapify(heap)
        self._heap = heap
        self._set_aside_none()  # every one back in the heap; FAILING ones leave at their turn
        self._seq = len(heap)
        self._by_state.track(endpoints)

    def _set_aside_none(self) -> None:
        self._aside = {}
        self._aside_by_state.track(())

    def _rejoin(self, states: tuple[EndpointState, ...]) -> None:
        """Put the endpoints set aside that are now in ``states`` back into the schedule:
        one found FAILING at its turn is due one turn of its own weight from now; one
        found connecting keeps the turn it was given if no READY pick has passed it, else
        is due one turn of its own weight from the last READY pick (as it would have been
        pushed back again at each of them)."""
        heap, steps, seq = self._heap, self._steps, self._seq
        aside, by_state = self._aside, self._aside_by_state
        now = heap[0][0] if heap else 0
        last = self._last
        for state in states:
            for ep in list(by_state.of(state)):
                by_state.discard(ep)
                entry = aside.pop(ep)
                if entry is None:
                    entry = (now + steps[ep.key], seq, ep)
                    seq += 1
                elif entry < last:
                    entry = (last[0] + steps[ep.key], seq, ep)
                    seq += 1
                heapq.heappush(heap, entry)
        self._seq = seq

    def _rejoin_for(self) -> None:
        """Back in the schedule before a pick: those set aside that are READY, all of them
        if none is READY (a connecting one is the pick then). With READY ones, all
        excluded (a retry), the connecting ones stay set aside: the pick looks them up
        (_first_aside)."""
        if not self._by_state.count(_READY):
            self._rejoin((_READY, _IDLE))
        elif self._aside_by_state.count(_READY):
            self._rejoin((_READY,))

    def _first_aside(self, exclude: Collection[Endpoint]
                     ) -> tuple[float, int, Endpoint] | None:
        """The connecting one set aside, not excluded, whose turn is first (taken out of
        those set aside), or None: no state read (they are kept by state)."""
        aside, last, steps = self._aside, self._last, self._steps
        first = None
        for ep in self._aside_by_state.of(_IDLE):
            if ep in exclude:
                continue
            entry = aside[ep]
            if entry is None:  # found FAILING at its turn, connecting again: one turn on
                entry = (last[0] + steps[ep.key], self._seq, ep)
                self._seq += 1
            elif entry < last:  # (as _turn)
                entry = (last[0] + steps[ep.key], entry[1], ep)
            if first is None or entry < first:
                first = entry
        if first is None:
            return None
        del aside[first[2]]
        self._aside_by_state.discard(first[2])
        return first

    def _turn(self, entry: tuple[float, int, Endpoint]) -> tuple[float, int, Endpoint]:
        """The turn of a connecting endpoint set aside: the one it was given while no
        READY pick has passed it, else one turn of its own from the last READY pick."""
        if entry < self._last:
            ep = entry[2]
            return (self._last[0] + self._steps[ep.key], entry[1], ep)
        return entry

    def _set_aside(self, ep: Endpoint, entry: tuple[float, int, Endpoint] | None) -> None:
        self._aside[ep] = entry
        self._aside_by_state.add(ep)

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Next endpoint due, or ``None`` if none is usable."""
        # none READY (and nothing to avoid): the first connecting one due is the pick, so
        # the rest of the heap keeps its turns unread (popping it all was O(n log n))
        first_idle = not exclude and not self._by_state.count(_READY)
        # every READY one excluded: the connecting ones set aside are left there (a
        # retry's pick when one of many is READY), the first one due is looked up below
        if self._aside:
            self._rejoin_for()
        heap = self._heap
        chosen = fallback = None
        passed: list[tuple[float, int, Endpoint]] = []
        idle: list[tuple[float, int, Endpoint]] = []  # still connecting
        ramp = self._ramp
        if ramp is not None and not ramp.ramping:
            ramp = None
        held: list[tuple[float, int, Endpoint]] = []  # newcomers passing their turn on
        while heap:
            entry = heapq.heappop(heap)
            ep = entry[2]
            if ep.state is _READY and not (exclude and ep in exclude):
                if ramp is not None and not ramp.keep(ep):
                    held.append(entry)
                    continue
                chosen = entry
                break
            if ep.state is _FAILING:
                self._set_aside(ep, None)  # out of the schedule until usable (_rejoin)
            elif exclude and ep in exclude:
                # taken if nothing else is usable: the first READY one due, else the first
                # connecting one due (a READY one found later takes its place)
                if fallback is None:
                    fallback = entry
                elif ep.state is _READY and fallback[2].state is not _READY:
                    passed.append(fallback)
                    fallback = entry
                else:
                    passed.append(entry)
            else:
                idle.append(entry)
                if first_idle:
                    break
        if chosen is None and exclude and self._aside and self._by_state.count(_READY):
            # every READY one excluded (a retry): the connecting ones set aside are
            # candidates too (left there by _rejoin_for), the first one due of them
            first = self._first_aside(exclude)
            if first is not None:
                if idle and idle[0] < first:
                    self._set_aside(first[2], first)
                else:
                    idle.insert(0, first)
        if held:
            # newcomers that passed their turn on: it passes unused while another READY
            # one takes the pick, else the first of them due takes it after all
            if chosen is None:
                chosen = held.pop(0)
            passed.extend(held)
        steps, seq = self._steps, self._seq
        if chosen is not None:
            # connecting while a READY one was there: due one turn of their own from now
            # (as a FAILING one rejoins), so no burst of the turns they missed; set aside
            # with that turn (pushed back, they came due together again at every pick)
            now = chosen[0]
            for _, _, ep in idle:
                self._set_aside(ep, (now + steps[ep.key], seq, ep))
                seq += 1
        elif idle:  # none READY: the first connecting one due; the others keep their turn
            chosen = idle[0]
            for entry in idle[1:]:
                heapq.heappush(heap, entry)
        else:
            chosen, fallback = fallback, None
        if fallback is not None:
            passed.append(fallback)
        for due, _, ep in passed:  # excluded: their turn passes unused
            heapq.heappush(heap, (due + steps[ep.key], seq, ep))
            seq += 1
        if chosen is None:
            self._seq = seq
            return None
        self._last = chosen
        due, _, ep = chosen
        heapq.heappush(heap, (due + steps[ep.key], seq, ep))
        self._seq = seq + 1
        return ep, noop_done


def _untried(eps: Sequence[Endpoint], exclude: Collection[Endpoint],
             rnd: Callable[[], float]) -> Endpoint | None:
    """A random endpoint of ``eps`` not in ``exclude`` (uniform), or ``None``: a few
    draws, then a scan of ``eps`` (O(1) while few are excluded)."""
    n = len(eps)
    if not n:
        return None
    for _ in range(4 if n > 2 else 2):
        ep = eps[int(rnd() * n)]
        if not (exclude and ep in exclude):
            return ep
    usable = [e for e in eps if e not in exclude]
    return usable[int(rnd() * len(usable))] if usable else None


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class RingHash:
    """Consistent hashing on a request key (Karger et al.; Envoy's ``RING_HASH``, gRPC's
    ``ring_hash``, gRFC A42).

    Each endpoint owns points on a 64-bit ring in proportion to its weight; a call with
    key ``k`` goes to the first usable endpoint clockwise from ``hash(k)``, so the same
    key keeps landing on the same endpoint (cache affinity) and only ~1/N of keys move
    when an endpoint joins or leaves. A call without a key goes to a random usable
    endpoint, a READY one while there is one (a keyed call waits for its owner to
    connect, as gRPC's ``ring_hash`` queues it, gRFC A42), drawn from the endpoints kept
    by state as their states change: O(1), however few of many endpoints are READY.
    ``FAILING`` endpoints are skipped; ``exclude`` is a preference, with or without a key:
    an excluded endpoint is taken only when no other is usable. While fewer than
    ``sqrt(n)`` of ``n`` endpoints are usable (an outage), a keyed pick finds that same
    owner from the usable endpoints' own points (O(usable x log points)) instead of
    walking the ring past the ``FAILING`` ones (3.1 ms a pick with 2,000 endpoints all
    ``FAILING``, 1.5 us now); with more, the walk meets one within about ``n / usable``
    owners.

    An endpoint of weight ``w`` gets ``replicas_per_weight * w`` points, whatever the
    other endpoints are, so below the bound a join, leave or ejection moves only the
    keys of the endpoint that came or went (normalising by the lightest weight, as this
    did, rescaled every other endpoint whenever the lightest one changed: a weight-1
    canary joining four endpoints of weight 5 moved 59 % of keys between the four). The
    ring is bounded, as Envoy and gRPC bound it: when that asks for more than
    ``max_ring_size`` points in all, each endpoint gets its weight's share of
    ``max_ring_size`` (rounded down), one at least, so weights written as percentages
    or 10**6 still make at most ``max_ring_size`` points (plus one per endpoint whose
    share rounds to nothing); above the bound a join or leave also trims or extends
    every endpoint's points a little. An endpoint's points are always a prefix of the
    same sequence of hashes, so a key moves only with the points that came or went.
    Unlike gRPC's ``min_ring_size``, nothing scales the ring up for few endpoints: an
    endpoint's points do not depend on how many others there are (below the bound), so a
    join or leave moves ~1/N of keys (scaled to ``min_ring_size`` 1024, going from 3 to 4
    endpoints moved 36 % of keys rather than 25 %). An update (every discovery change,
    ejection or return under outlier ejection) hashes only the points not hashed before:
    each endpoint's points are kept while it stays, or comes back soon.

    Args:
        replicas_per_weight: ring points per unit of weight (default 100), an integer
            >= 1.
        rng: random source for keyless calls (default a new ``random.Random()``,
            reseeded in a child made by ``os.fork()``; one given is never reseeded).
        max_ring_size: most points on the ring (default 4096, gRPC's default ring size
            cap; at most 8,388,608, gRPC's ``max_ring_size`` limit); the ring holds more
            only with more endpoints than this (one point each).

    Raises:
        ConfigError: ``replicas_per_weight`` or ``max_ring_size`` is not an integer in
            range (NaN, ``True``), or ``rng`` no random source (a seed given for
            ``random.Random(seed)``, the class itself); quoted.
    """

    __slots__ = ("_by_state", "_eps", "_hashes", "_max_ring", "_own", "_owners", "_points",
                 "_replicas", "_rng")

    def __init__(self, replicas_per_weight: int = 100, rng: random.Random | None = None, *,
                 max_ring_size: int = 4096) -> None:
        check_int("replicas_per_weight", replicas_per_weight)
        check_int("max_ring_size", max_ring_size, high=_MAX_RING)
        check_rng("rng", rng, ("random", "choice"))
        self._replicas = replicas_per_weight
        self._max_ring = max_ring_size
        self._rng = rng if rng is not None else ForkSafeRandom()
        self._eps: tuple[Endpoint, ...] = ()
        self._points: list[int] = []
        self._owners: list[Endpoint] = []
        self._hashes: dict[str, list[int]] = {}  # key -> its points hashed so far
        # each endpoint's points on the ring, sorted: with few usable endpoints a keyed
        # pick looks up the nearest of theirs (_nearest), not a walk of the ring
        self._own: dict[Endpoint, list[int]] = {}
        # the endpoints by state (kept by their state's setter): a keyless pick draws from
        # the READY (then connecting) ones, O(1), not lists of every endpoint
        self._by_state = StateIndex()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Rebuild the ring for ``endpoints``: O(ring size x log), points hashed once."""
        counts = self._counts([ep.instance.weight for ep in endpoints])
        hashes = self._hashes
        ring: list[tuple[int, str]] = []
        by_key: dict[str, Endpoint] = {}
        most: dict[str, int] = {}  # the most points of an endpoint listed under a key
        for ep, count in zip(endpoints, counts, strict=True):
            key = ep.key
            by_key[key] = ep
            mine = hashes.get(key)
            if mine is None:
                mine = hashes[key] = []
            for i in range(len(mine), count):
                mine.append(_hash64(f"{key}#{i}"))
            ring.extend((h, key) for h in mine[:count])
            if count > most.get(key, 0):
                most[key] = count
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [by_key[key] for _, key in ring]
        # each key's points (an endpoint listed twice under one key: the ring holds the
        # points of both, the larger prefix, all owned by the last one listed)
        self._own = {by_key[key]: sorted(hashes[key][:c]) for key, c in most.items()}
        self._eps = tuple(endpoints)
        self._by_state.track(self._eps)
        if len(hashes) > 2 * len(by_key):  # forget those gone a while (bounded memory)
            self._hashes = {key: hashes[key] for key in by_key}

    def _counts(self, weights: list[int]) -> list[int]:
        """Ring points per endpoint of these weights (integers: exact for any weight)."""
        if not weights:
            return []
        r = self._replicas
        counts = [r * w for w in weights]  # its own weight only: others never rescale it
        total = sum(counts)
        if total <= self._max_ring:
            return counts
        cap = self._max_ring
        return [max(1, c * cap // total) for c in counts]

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """The owner of ``key`` on the ring (skipping failing/excluded), or ``None``."""
        if not self._eps:
            return None
        if key is None:  # no affinity to keep: a READY endpoint before a connecting one
            # uniform among the untried READY ones, else the untried connecting ones,
            # else the tried READY ones, else the tried connecting ones
            rnd = self._rng.random
            ready, idle = self._by_state.of(_READY), self._by_state.of(_IDLE)
            ep = _untried(ready, exclude, rnd) or _untried(idle, exclude, rnd)
            if ep is None:  # (every usable endpoint tried)
                usable = ready or idle
                if not usable:
                    return None
                ep = usable[int(rnd() * len(usable))]
            return ep, noop_done
        h = _hash64(key)
        by_state = self._by_state
        live = by_state.count(_READY) + by_state.count(_IDLE)
        if live * live < len(self._eps):
            # few usable (an outage): the walk below would read about n / usable owners,
            # the lookup reads usable ones (either way at most about sqrt(n) a pick)
            return self._nearest(h, exclude)
        n = len(self._points)
        start = bisect.bisect(self._points, h)
        fallback: Endpoint | None = None
        seen: set[str] = set()
        for i in range(n):
            ep = self._owners[(start + i) % n]
            if ep.key in seen:
                continue
            seen.add(ep.key)
            if ep.state is not _FAILING:
                if not (exclude and ep in exclude):
                    return ep, noop_done
                fallback = fallback or ep
            if len(seen) == len(self._eps):
                break
        return (fallback, noop_done) if fallback is not None else None

    def _nearest(self, h: int, exclude: Collection[Endpoint]) -> tuple[Endpoint, Done] | None:
        """The owner of hash ``h`` among the usable endpoints (not ``FAILING``), as the
        clockwise walk finds it: the untried one whose first point after ``h`` (round
        the ring) comes first, else the tried one's; ``None`` with none usable. Reads
        the usable endpoints kept by state and bisects their own points:
        O(usable x log points), however many endpoints are ``FAILING``."""
        own = self._own
        best: tuple[bool, int, str] | None = None
        best_ep: Endpoint | None = None
        fallback: tuple[bool, int, str] | None = None
        fallback_ep: Endpoint | None = None
        for state in (_READY, _IDLE):
            for ep in self._by_state.of(state):
                mine = own.get(ep)
                if not mine:
                    continue
                i = bisect.bisect(mine, h)
                # ring order from h: the points after it, then those from the start
                at = (False, mine[i], ep.key) if i < len(mine) else (True, mine[0], ep.key)
                if not (exclude and ep in exclude):
                    if best is None or at < best:
                        best, best_ep = at, ep
                elif fallback is None or at < fallback:
                    fallback, fallback_ep = at, ep
        chosen = best_ep if best_ep is not None else fallback_ep
        return (chosen, noop_done) if chosen is not None else None


# weighted round robins with their default random source draw their turns afresh in a
# forked child (WeightedRoundRobin._forget_parent)
_wrr_forked = reset_in_forked_child(WeightedRoundRobin)
