"""The balancer's view of the world: :class:`Endpoint`, :class:`EndpointState` and the
:class:`Balancer` protocol.

Pure policy, no I/O: a balancer sees endpoints and their connectivity and returns one per
call with a ``done`` callback that feeds the call's outcome back (the go-kratos
``Select() -> (node, done)`` shape), which is what latency-aware balancers (P2C over
peak-EWMA) learn from. An :class:`Endpoint` carries no connection: the channel's endpoint
pool keeps each endpoint's sub-channel by ``Endpoint.key``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from enum import IntEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Protocol

import grpc

from meshkit.discovery._types import Instance

__all__ = ["Balancer", "Done", "Endpoint", "EndpointState", "StateIndex", "noop_done"]

Done = Callable[[grpc.StatusCode, float], None]
"""Outcome callback of one pick: ``done(status_code, latency_s)``. A negative
``latency_s`` is an outcome without a latency sample: the channel reports streams so,
since a stream's lifetime (a watch, a subscription) is no round-trip time."""


def noop_done(code: grpc.StatusCode, latency_s: float) -> None:
    """A :data:`Done` that records nothing (for balancers that keep no statistics)."""


class EndpointState(IntEnum):
    """Connectivity of an endpoint's sub-channel, ordered best first.

    ``READY`` is connected; ``IDLE`` covers idle and connecting (a call will connect);
    ``FAILING`` is gRPC's ``TRANSIENT_FAILURE`` (connection refused or lost).
    """

    READY = 0
    IDLE = 1
    FAILING = 2


class Endpoint:
    """One instance as the balanced channel sees it: its identity, state and counters.

    Attributes:
        instance: the registry :class:`~meshkit.discovery.Instance`.
        state: :class:`EndpointState`, kept current by the channel (IDLE at first).
            Setting it moves the endpoint in every :class:`StateIndex` that holds it
            (the one place a state changes: the indexes cannot fall out of step).
        in_flight: calls started on this endpoint and not finished.
        calls: calls ever picked for this endpoint; failures: of those, non-OK outcomes
            (a call cancelled on this side, by its caller or for its caller's message,
            is none).
        key: ``instance.instance_id``.
        address: ``instance.address`` (``host:port``), computed once.

    Args:
        instance: the instance this endpoint stands for.
    """

    __slots__ = ("_indexes", "_state", "address", "calls", "failures", "in_flight",
                 "instance", "key")

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.key = instance.instance_id
        self.address = instance.address
        self._state = EndpointState.IDLE
        # the StateIndex objects holding this endpoint (StateIndex.add/discard)
        self._indexes: tuple[StateIndex, ...] = ()
        self.in_flight = 0
        self.calls = 0
        self.failures = 0

    def _set_state(self, state: EndpointState) -> None:
        old = self._state
        if state is not old:
            self._state = state
            for index in self._indexes:
                index._moved(self, old)

    if TYPE_CHECKING:
        @property
        def state(self) -> EndpointState: ...
        @state.setter
        def state(self, state: EndpointState) -> None: ...
    else:
        # read as a slot is, without a Python frame (a per-call read); set: _set_state
        state = property(attrgetter("_state"), _set_state)

    def __repr__(self) -> str:
        return (f"Endpoint({self.key!r}, {self.address}, {self._state.name},"
                f" in_flight={self.in_flight})")


class StateIndex:
    """A set of endpoints by state, kept in step by :attr:`Endpoint.state`'s setter:
    how many are in a state, and those endpoints as a list to draw from, in O(1)
    (a scan of every endpoint made a pick among thousands, few of them READY, O(n)).

    An endpoint may be in any number of indexes (a balancer's, the pool's). The lists
    :meth:`of` gives are the index's own, in no particular order: read, never changed.
    """

    __slots__ = ("__weakref__", "_at", "_lists")

    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        # one list per EndpointState (its value), and each member's position in its list
        self._lists: tuple[list[Endpoint], ...] = tuple([] for _ in EndpointState)
        self._at: dict[Endpoint, int] = {}
        self.track(endpoints)

    def of(self, state: EndpointState) -> list[Endpoint]:
        """The members in ``state`` (the index's own list: do not change it)."""
        return self._lists[state]

    def count(self, state: EndpointState) -> int:
        """How many members are in ``state``, O(1)."""
        return len(self._lists[state])

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, ep: object) -> bool:
        return ep in self._at

    def add(self, ep: Endpoint) -> None:
        """Make ``ep`` a member (no change if it is one)."""
        if ep not in self._at:
            self._put(ep, ep._state)
            ep._indexes += (self,)

    def discard(self, ep: Endpoint) -> None:
        """Make ``ep`` no member (no change if it is none)."""
        if ep in self._at:
            self._take(ep, ep._state)
            ep._indexes = tuple(i for i in ep._indexes if i is not self)

    def track(self, endpoints: Iterable[Endpoint]) -> None:
        """Make ``endpoints`` the members (O(members + len(endpoints)))."""
        new = dict.fromkeys(endpoints)
        for ep in [e for e in self._at if e not in new]:
            self.discard(ep)
        for ep in new:
            self.add(ep)

    def _moved(self, ep: Endpoint, old: EndpointState) -> None:
        if ep in self._at:  # (a copy of a member endpoint names the index too)
            self._take(ep, old)
            self._put(ep, ep._state)

    def _put(self, ep: Endpoint, state: EndpointState) -> None:
        members = self._lists[state]
        self._at[ep] = len(members)
        members.append(ep)

    def _take(self, ep: Endpoint, state: EndpointState) -> None:
        members = self._lists[state]
        i = self._at.pop(ep)
        last = members.pop()
        if last is not ep:  # the last one takes its place
            members[i] = last
            self._at[last] = i


class Balancer(Protocol):
    """Picks an endpoint per call.

    ``update`` replaces the endpoint list (called by the channel when discovery changes it);
    ``pick`` returns ``(endpoint, done)`` and the caller must call ``done(code, latency_s)``
    exactly once when the call ends. ``exclude`` holds endpoints already tried by this
    logical call (retries prefer a different endpoint) and, for a hedged call, those its
    other attempts are waiting on while they connect (a collection tested with ``in``
    and truth; iterate it for the tried ones only); it is a preference, not a rule.
    ``pick`` returns ``None`` when no endpoint can take a call (the channel then fails the
    call with ``UNAVAILABLE``).

    Optional: ``pick_stream(key, exclude)``, the same for a streaming-response call, whose
    outcome callback also has ``responded()``, which the channel calls once at the
    stream's first response message (before ``done``); :class:`~meshkit.balancer.P2C`
    stops counting the stream as pending then (:class:`~meshkit.balancer.StreamPending`)
    and :class:`~meshkit.balancer.EjectingBalancer` decides a half-open probe by it
    (:class:`~meshkit.balancer.StreamDone`). A balancer without it gets streams through
    ``pick``, counted until they end.

    Optional: ``cold_start(on)``, the channel's pool saying whether the next updates
    belong to the first discovery answer (``True`` before its first batch, ``False``
    once its last batch is in, once); a balancer that slow-starts newcomers ramps none
    of them (:meth:`P2C.cold_start <meshkit.balancer.P2C.cold_start>`). The pool and
    the wrappers (:class:`~meshkit.balancer.EjectingBalancer`,
    :class:`~meshkit.balancer.ZoneAwareBalancer`) look it up with ``getattr``: a
    balancer without it is never asked; a wrapper of one's own should forward it.

    Optional: ``census(endpoints)``, every endpoint of the service, those out of
    rotation included: :class:`~meshkit.balancer.EjectingBalancer` calls it with its
    whole list before the ``update`` that gives the endpoints in rotation, so a
    balancer can count an ejected endpoint as unhealthy
    (:class:`~meshkit.balancer.ZoneAwareBalancer`'s spillover share, as Envoy counts
    ejected hosts for a locality's health). Looked up with ``getattr``, as
    ``cold_start``; a wrapper of one's own should forward it.

    Optional: ``observe(endpoint, code, latency_s)``, the outcome of a call sent to
    ``endpoint`` not through ``pick``: :class:`~meshkit.balancer.EjectingBalancer`'s
    successful unary probe of an ejected endpoint, handed over once the endpoint is
    back in the list (:class:`~meshkit.balancer.P2C` records it as a latency sample).
    Looked up with ``getattr``; a wrapper of one's own should forward it.

    Optional: ``remove(endpoint)`` and ``restore(endpoint, at)``, together: ``update``
    with the list without ``endpoint``, or with it put back at index ``at``, told one
    endpoint at a time (the rest of the list stays as it is).
    :class:`~meshkit.balancer.EjectingBalancer` hands an ejection and a return so, where
    the balancer has both, so that a storm of ejections costs work per ejection, not a
    full ``update`` of every endpoint in rotation each (O(n): 5-8 ms at 4,000
    endpoints); else it calls ``update``. :class:`~meshkit.balancer.P2C`,
    :class:`~meshkit.balancer.RoundRobin` and :class:`~meshkit.balancer.ZoneAwareBalancer`
    (which forwards them to its zone groups' balancers) have them. Looked up with
    ``getattr``; a wrapper of one's own should forward both or neither.
    """

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list."""
        ...

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Choose an endpoint; ``key`` is an optional request key for affinity balancers."""
        ...
