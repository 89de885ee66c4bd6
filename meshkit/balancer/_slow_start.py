"""Slow start for the turn-taking balancers (:class:`~meshkit.balancer.RoundRobin`,
:class:`~meshkit.balancer.WeightedRoundRobin`), with :class:`~meshkit.balancer.P2C`'s
option names and rules (pure policy, no I/O).

An endpoint added after the first discovery answer ramps up over ``slow_start_s`` from
its first READY after it was added (from its addition if it was READY then): its
weight grows linearly from ``slow_start_min_weight`` to 1. At its turn it takes the pick
when its credit, raised by its weight at each of its turns, reaches 1; else its turn
passes to the next endpoint in turn. An endpoint whose turn comes ``k`` times so takes
about ``weight * k`` picks: its share is its weight over the sum of the weights (1 for
those past their ramp), Envoy's slow start for ``round_robin``, which scales each host's
scheduler weight by its ramp factor. Deterministic (no random source): each client
spreads a newcomer's picks evenly over its ramp.

Endpoints of the first answer never ramp (nothing to protect them from): those added
while the channel's pool says the first answer is coming in (``cold_start(True)``), and,
for a balancer used alone, those added before any of its endpoints was READY. With no
endpoint past its ramp (a service whose every endpoint is new), nothing is held back.
An endpoint that leaves the list and comes back (an ejection by
:class:`~meshkit.balancer.EjectingBalancer`, a re-registration) ramps again: it may have
restarted cold, and Envoy starts a host's slow start when it (re)joins the healthy set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshkit._config import check_number
from meshkit.balancer._endpoint import Endpoint, EndpointState, StateIndex

__all__ = ["Ramped", "SlowStart", "check_slow_start"]

_READY = EndpointState.READY


def check_slow_start(slow_start_s: float, slow_start_min_weight: float) -> None:
    """Check the slow-start options as :class:`~meshkit.balancer.P2COptions` does.

    Args:
        slow_start_s: ramp window, seconds, >= 0 (0 disables).
        slow_start_min_weight: weight at the start of the ramp, in (0, 1].

    Raises:
        ConfigError: a value out of range (quoted).
    """
    check_number("slow_start_s", slow_start_s, low=0.0)
    check_number("slow_start_min_weight", slow_start_min_weight, low_open=True, high=1.0)


class _Ramp:
    __slots__ = ("address", "credit", "since")

    def __init__(self, address: str, since: float | None) -> None:
        self.address = address
        self.since = since  # None: waiting for its first READY
        self.credit = 0.0


class SlowStart(StateIndex):
    """The ramps of a turn-taking balancer's newcomers (module docstring).

    Kept by the balancer: :meth:`update` with each endpoint list, :meth:`keep` at an
    endpoint's READY turn. An index of the endpoints by state (the first READY of a
    newcomer starts its ramp, at the state change: nothing per pick).

    Args:
        slow_start_s: ramp window, seconds (> 0).
        min_weight: weight at the start of the ramp, in (0, 1].
        clock: monotonic seconds.
    """

    __slots__ = ("clock", "cold", "min_weight", "ramping", "served", "slow_start_s")

    def __init__(self, slow_start_s: float, min_weight: float,
                 clock: Callable[[], float]) -> None:
        super().__init__()
        self.slow_start_s = slow_start_s
        self.min_weight = min_weight
        self.clock = clock
        self.ramping: dict[str, _Ramp] = {}  # key -> its ramp, until over
        self.served = False  # a member has been READY (the cold start is over)
        self.cold = False  # the pool says the first answer is coming in

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """The balancer's new endpoint list: a newcomer (a key not in the last list, or
        at another address) ramps unless it belongs to the first answer."""
        now = self.clock()
        ramps = self.served and not self.cold
        old = self.ramping
        ramping: dict[str, _Ramp] = {}
        for ep in endpoints:
            if ep in self:  # stays: its ramp goes on, if any
                r = old.get(ep.key)
                if r is not None and r.address == ep.address:
                    ramping[ep.key] = r
                elif r is None or not ramps:
                    continue
                else:
                    ramping[ep.key] = _Ramp(ep.address, now if ep.state is _READY else None)
            elif ramps:
                ramping[ep.key] = _Ramp(ep.address, now if ep.state is _READY else None)
        self.ramping = ramping
        self.track(endpoints)
        if self.count(_READY):
            self.served = True

    def removed(self, ep: Endpoint) -> None:
        """``ep`` left the balancer's list (the rest stays): :meth:`update` with the list
        without it, in O(1)."""
        self.ramping.pop(ep.key, None)
        self.discard(ep)

    def restored(self, ep: Endpoint) -> None:
        """``ep`` (not in the list) joined it (the rest stays): :meth:`update` with the
        list with it, in O(1); a newcomer, which ramps unless the first answer is
        coming in or no member has been READY."""
        if ep in self:
            return
        if self.served and not self.cold:
            self.ramping[ep.key] = _Ramp(ep.address,
                                         self.clock() if ep.state is _READY else None)
        self.add(ep)
        if self.count(_READY):
            self.served = True

    def _moved(self, ep: Endpoint, old: EndpointState) -> None:
        super()._moved(ep, old)
        if ep._state is _READY and ep in self:
            self.served = True
            r = self.ramping.get(ep.key)
            if r is not None and r.since is None:
                r.since = self.clock()

    def weight(self, ep: Endpoint, now: float | None = None) -> float:
        """Slow-start weight of ``ep`` in (0, 1]; 1 when its ramp is over or never began
        (one not READY yet since it was added counts from its first READY)."""
        r = self.ramping.get(ep.key)
        if r is None:
            return 1.0
        if r.since is None:
            return self.min_weight
        age = (self.clock() if now is None else now) - r.since
        if age >= self.slow_start_s:
            return 1.0
        return max(self.min_weight, age / self.slow_start_s)

    def keep(self, ep: Endpoint) -> bool:
        """At ``ep``'s READY turn: ``True`` to take the pick, ``False`` to pass the turn
        on (its credit, raised by its weight, is below 1). Always ``True`` past its ramp,
        and while no endpoint is past its ramp."""
        ramping = self.ramping
        r = ramping.get(ep.key)
        if r is None:
            return True
        w = self.weight(ep)
        if w >= 1.0:
            del ramping[ep.key]
            return True
        if len(ramping) >= len(self):  # none past its ramp: nothing to hold back for
            return True
        r.credit += w
        if r.credit >= 1.0:
            r.credit -= 1.0
            return True
        return False


class Ramped:
    """What RoundRobin and WeightedRoundRobin share of their optional slow start: a
    balancer holding a :class:`SlowStart` (or ``None``: no slow start) as ``_ramp``, in
    a ``__slots__`` of its own."""

    __slots__ = ()
    _ramp: SlowStart | None

    def cold_start(self, on: bool) -> None:
        """The channel's pool says whether the next updates belong to the first discovery
        answer (``on``), whose endpoints never ramp (see
        :meth:`P2C.cold_start <meshkit.balancer.P2C.cold_start>`)."""
        if self._ramp is not None:
            self._ramp.cold = bool(on)

    def weight(self, ep: Endpoint) -> float:
        """Slow-start weight of ``ep`` in (0, 1]; 1 without slow start or past its ramp."""
        return 1.0 if self._ramp is None else self._ramp.weight(ep)
