"""Balancer policy: the :class:`Balancer` protocol, :class:`Endpoint` and round robin.

Pure policy, no I/O: a balancer sees endpoints and their connectivity and returns one per
call with a ``done`` callback that feeds the call's outcome back (the go-kratos
``Select() -> (node, done)`` shape), which is what latency-aware balancers (P2C over
peak-EWMA) learn from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from enum import IntEnum
from typing import Any, Protocol

import grpc

from meshkit.discovery._types import Instance

__all__ = ["Balancer", "Done", "Endpoint", "EndpointState", "RoundRobin", "noop_done"]

Done = Callable[[grpc.StatusCode, float], None]
"""Outcome callback of one pick: ``done(status_code, latency_s)``."""


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
        state: :class:`EndpointState`, kept current by the channel.
        in_flight: calls started on this endpoint and not finished.
        calls: calls ever picked for this endpoint; failures: of those, non-OK outcomes.
        channel: the grpc.aio sub-channel (opaque to balancers).
        callables: the sub-channel's multicallables by method (opaque to balancers).
    """

    __slots__ = ("callables", "calls", "channel", "failures", "in_flight", "instance", "key",
                 "state")

    def __init__(self, instance: Instance, channel: Any = None) -> None:
        self.instance = instance
        self.key = instance.instance_id
        self.state = EndpointState.IDLE
        self.in_flight = 0
        self.calls = 0
        self.failures = 0
        self.channel = channel
        self.callables: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"Endpoint({self.key!r}, {self.instance.address}, {self.state.name},"
                f" in_flight={self.in_flight})")


class Balancer(Protocol):
    """Picks an endpoint per call.

    ``update`` replaces the endpoint list (called by the channel when discovery changes it);
    ``pick`` returns ``(endpoint, done)`` and the caller must call ``done(code, latency_s)``
    exactly once when the call ends. ``exclude`` holds endpoints already tried by this
    logical call (retries prefer a different endpoint); it is a preference, not a rule.
    ``pick`` returns ``None`` when no endpoint can take a call (the channel then fails the
    call with ``UNAVAILABLE``).
    """

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list."""
        ...

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Choose an endpoint; ``key`` is an optional request key for affinity balancers."""
        ...


class RoundRobin:
    """Round robin over usable endpoints, as gRPC's ``round_robin`` LB policy.

    READY endpoints are taken in turn; when none is READY, idle/connecting ones are (the
    call connects); endpoints in ``FAILING`` are skipped; with every endpoint failing,
    :meth:`pick` returns ``None``. The start position is random so that many clients do not
    all hit the first endpoint. Keeps no statistics (``done`` is a no-op).

    Args:
        rng: random source for the start position (default: a new ``random.Random()``).
    """

    __slots__ = ("_endpoints", "_next")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._endpoints: tuple[Endpoint, ...] = ()
        self._next = (rng or random.Random()).randrange(1 << 30)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list (order is kept as given)."""
        self._endpoints = tuple(endpoints)

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Next usable endpoint in turn, or ``None`` if none is usable. ``key`` is ignored."""
        eps = self._endpoints
        n = len(eps)
        if n == 0:
            return None
        start = self._next
        self._next = start + 1
        fallback: Endpoint | None = None
        excluded: Endpoint | None = None
        for i in range(n):
            ep = eps[(start + i) % n]
            if ep.state is EndpointState.READY:
                if exclude and ep in exclude:
                    excluded = excluded or ep
                    continue
                return ep, noop_done
            if ep.state is EndpointState.IDLE and fallback is None and ep not in exclude:
                fallback = ep
        chosen = fallback or excluded
        return (chosen, noop_done) if chosen is not None else None
