"""Round robin, as gRPC's ``round_robin`` LB policy (pure policy, no I/O)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Collection, Sequence

from meshkit._config import check_clock, check_rng
from meshkit._fork import reset_in_forked_child
from meshkit.balancer._endpoint import Done, Endpoint, EndpointState, StateIndex, noop_done
from meshkit.balancer._slow_start import Ramped, SlowStart, check_slow_start

_READY = EndpointState.READY
_IDLE = EndpointState.IDLE
# endpoints a pick looks at in turn before it looks for the next READY one by state
_WALK = 8

__all__ = ["RoundRobin"]


class RoundRobin(Ramped):
    """Round robin over usable endpoints, as gRPC's ``round_robin`` LB policy.

    READY endpoints are taken in turn (the turn passes over endpoints that are not
    READY, so each READY one gets an equal share, as gRPC's picker over its READY
    subchannels); when none is READY, idle/connecting ones are (the
    call connects); endpoints in ``FAILING`` are skipped; with every endpoint failing,
    :meth:`pick` returns ``None``. ``exclude`` is a preference: an excluded endpoint is
    taken only when no other is usable (a READY one before an idle/connecting one), so a
    retry to a service's only endpoint goes to it again. The start position is random so
    that many clients do not all hit the first endpoint. Keeps no statistics (``done`` is
    a no-op). In a child made by ``os.fork()`` a balancer with its default random
    source takes a new random position (from ``os.urandom``): workers forked from one
    process otherwise went on from the parent's, each sending the same endpoints its
    calls in the same order.

    Slow start (off by default, as Envoy's ``slow_start_config``; gRPC's
    ``round_robin`` has none): with ``slow_start_s`` > 0, an endpoint added after the
    first discovery answer ramps up over ``slow_start_s`` from its first READY, with
    :class:`~meshkit.balancer.P2C`'s option names and rules: at its turn it takes the
    pick about ``weight`` of the times and passes the turn on otherwise, so its share is
    its weight over the sum of the weights (Envoy's normalised weights); an endpoint
    back from an ejection ramps again (:mod:`meshkit.balancer._slow_start`).

    Args:
        rng: random source for the start position (default: a new ``random.Random()``,
            and a new position in a forked child; with one given the position is kept
            there).
        slow_start_s: ramp window of endpoints added later, seconds, >= 0; 0 (default)
            disables.
        slow_start_min_weight: weight at the start of the ramp, (0, 1] (default 0.1).
        clock: monotonic seconds for the ramps (default ``time.monotonic``).

    Raises:
        ConfigError: ``rng`` is no random source (a seed given for
            ``random.Random(seed)``, the class itself), a slow-start value out of range
            or ``clock`` not callable; quoted.
    """

    __slots__ = ("__weakref__", "_by_state", "_endpoints", "_next", "_positions", "_ramp")

    def __init__(self, rng: random.Random | None = None, *, slow_start_s: float = 0.0,
                 slow_start_min_weight: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_rng("rng", rng, ("randrange",))
        check_slow_start(slow_start_s, slow_start_min_weight)
        check_clock("clock", clock, wall=False)
        # the newcomers' ramps (None: no slow start)
        self._ramp = (SlowStart(slow_start_s, slow_start_min_weight, clock)
                      if slow_start_s > 0 else None)
        self._endpoints: tuple[Endpoint, ...] = ()
        # each endpoint's places in the turn (None: made at its next use, after a
        # remove/restore), and the endpoints by state (kept by their state's setter):
        # the next READY one in turn is found among the READY ones
        self._positions: dict[Endpoint, list[int]] | None = {}
        self._by_state = StateIndex()
        self._next = (rng if rng is not None else random.Random()).randrange(1 << 30)
        if rng is None:
            _rr_forked.add(self)

    def _forget_parent(self) -> None:
        """In a forked child: a new random position (see the class)."""
        self._next = int.from_bytes(os.urandom(4), "big") % (1 << 30)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list (order is kept as given)."""
        if self._ramp is not None:
            self._ramp.update(endpoints)
        self._endpoints = tuple(endpoints)
        self._positions = None
        self._by_state.track(self._endpoints)

    def remove(self, ep: Endpoint) -> None:
        """Take ``ep`` out of the list, as :meth:`update` with the list without it would
        (the optional ``remove`` of :class:`~meshkit.balancer.Balancer`:
        :class:`~meshkit.balancer.EjectingBalancer` hands an ejected endpoint over so).
        O(1) but for a copy of the list (in C), not :meth:`update`'s O(n) (8 ms at 4,000
        endpoints, every ejection of a storm). An endpoint not in the list is ignored.

        Args:
            ep: the endpoint to take out (the object in the list)."""
        if ep not in self._by_state:
            return
        eps = self._endpoints
        i = eps.index(ep)
        rest = eps[:i] + eps[i + 1:]
        if ep in rest:  # listed twice: as update does it
            self.update([e for e in eps if e is not ep])
            return
        self._endpoints = rest
        self._positions = None
        self._by_state.discard(ep)
        if self._ramp is not None:
            self._ramp.removed(ep)

    def restore(self, ep: Endpoint, at: int) -> None:
        """Put ``ep`` back in the list at position ``at``, as :meth:`update` with the list
        so would (the optional ``restore`` of :class:`~meshkit.balancer.Balancer`:
        :class:`~meshkit.balancer.EjectingBalancer` hands an endpoint back from an
        ejection so): the turn goes on from where it was; with slow start, a newcomer
        that ramps. O(1) but for a copy of the list (in C). An endpoint in the list
        already is moved there by :meth:`update`.

        Args:
            ep: the endpoint to put back.
            at: its index in the new list, 0 to ``len(list)`` (clamped)."""
        eps = self._endpoints
        at = max(0, min(at, len(eps)))
        if ep in self._by_state:
            rest = [e for e in eps if e is not ep]
            self.update([*rest[:at], ep, *rest[at:]])
            return
        self._endpoints = (*eps[:at], ep, *eps[at:])
        self._positions = None
        self._by_state.add(ep)
        if self._ramp is not None:
            self._ramp.restored(ep)

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Next usable endpoint in turn, or ``None`` if none is usable. ``key`` is ignored.

        Looks at a few endpoints in turn, then finds the next READY one (or, with none,
        the next connecting one) among the endpoints kept by state: O(1) while most are
        READY (or, with none READY, connecting), O(READY) at most, not a walk of every
        endpoint when few of many are READY."""
        eps = self._endpoints
        n = len(eps)
        if n == 0:
            return None
        start = self._next
        ramp = self._ramp
        if ramp is not None and ramp.ramping:
            # a newcomer passes its turn on (SlowStart.keep): the walk goes on to the
            # next one in turn, a step more per READY newcomer than below (not the whole
            # turn, nor a step per newcomer: O(n) a pick with few of many READY and
            # newcomers that never connect, whose ramps never start)
            walk = _WALK + min(len(ramp.ramping), ramp.count(_READY))
            for i in range(min(n, walk)):
                ep = eps[(start + i) % n]
                if (ep._state is _READY and not (exclude and ep in exclude)
                        and ramp.keep(ep)):
                    self._next = (start + i + 1) % n
                    return ep, noop_done
        for i in range(min(n, _WALK)):
            ep = eps[(start + i) % n]
            if ep._state is _READY and not (exclude and ep in exclude):
                # the turn goes on from the endpoint taken, not from the start: skipping
                # an unusable endpoint must not give the next one its turn as well
                self._next = (start + i + 1) % n
                return ep, noop_done
        at = self._first(_READY, start, exclude, untried=True) if n > _WALK else None
        if at is not None:
            self._next = (at + 1) % n
            return eps[at], noop_done
        self._next = start + 1
        # none READY untried: a connecting one, else an excluded READY one, else an
        # excluded connecting one, the first in turn each
        at = self._first(_IDLE, start, exclude, untried=True)
        if at is None and exclude:
            at = self._first(_READY, start, exclude, untried=False)
            if at is None:
                at = self._first(_IDLE, start, exclude, untried=False)
        return (eps[at], noop_done) if at is not None else None

    def _first(self, state: EndpointState, start: int, exclude: Collection[Endpoint], *,
               untried: bool) -> int | None:
        """The position of the first endpoint in turn from ``start`` in ``state`` and not
        in ``exclude`` (``untried``) or in it, or ``None``: a walk in turn while such
        endpoints are many (found within a few steps), else the nearest of them."""
        eps = self._endpoints
        n = len(eps)
        members = self._by_state.of(state)
        if not members:
            return None
        if len(members) * _WALK >= n:
            for i in range(n):
                ep = eps[(start + i) % n]
                if ep.state is state and (not (exclude and ep in exclude)) is untried:
                    return (start + i) % n
            return None
        best: int | None = None
        nearest = n
        positions = self._positions
        if positions is None:  # (made afresh after an update, O(n) once)
            positions = self._positions = {}
            for i, e in enumerate(eps):
                positions.setdefault(e, []).append(i)
        for ep in members:
            if (not (exclude and ep in exclude)) is untried:
                for at in positions[ep]:
                    if (at - start) % n < nearest:
                        best, nearest = at, (at - start) % n
        return best


# round robins with their default random source take a new position in a forked child
_rr_forked = reset_in_forked_child(RoundRobin)
