"""The balancer's view of the world: :class:`Endpoint`, :class:`EndpointState` and the
:class:`Balancer` protocol.

Pure policy, no I/O: a balancer sees endpoints and their connectivity and returns one per
call with a ``done`` callback that feeds the call's outcome back (the go-kratos
``Select() -> (node, done)`` shape), which is what latency-aware balancers (P2C over
peak-EWMA) learn from. An :class:`Endpoint` carries no connection: the channel's endpoint
pool keeps each endpoint's sub-channel by ``Endpoint.key``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from enum import IntEnum
from typing import Protocol

import grpc

from meshkit.discovery._types import Instance

__all__ = ["Balancer", "Done", "Endpoint", "EndpointState", "noop_done"]

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
        state: :class:`EndpointState`, kept current by the channel.
        in_flight: calls started on this endpoint and not finished.
        calls: calls ever picked for this endpoint; failures: of those, non-OK outcomes
            (a call cancelled on this side, by its caller or for its caller's message,
            is none).
        key: ``instance.instance_id``.
        address: ``instance.address`` (``host:port``), computed once.

    Args:
        instance: the instance this endpoint stands for.
    """

    __slots__ = ("address", "calls", "failures", "in_flight", "instance", "key", "state")

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.key = instance.instance_id
        self.address = instance.address
        self.state = EndpointState.IDLE
        self.in_flight = 0
        self.calls = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (f"Endpoint({self.key!r}, {self.address}, {self.state.name},"
                f" in_flight={self.in_flight})")


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
    """

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list."""
        ...

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Choose an endpoint; ``key`` is an optional request key for affinity balancers."""
        ...
