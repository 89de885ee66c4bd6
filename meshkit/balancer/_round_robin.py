"""Round robin, as gRPC's ``round_robin`` LB policy (pure policy, no I/O)."""

from __future__ import annotations

import os
import random
from collections.abc import Collection, Sequence

from meshkit._config import check_rng
from meshkit._fork import reset_in_forked_child
from meshkit.balancer._endpoint import Done, Endpoint, EndpointState, noop_done

__all__ = ["RoundRobin"]


class RoundRobin:
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

    Args:
        rng: random source for the start position (default: a new ``random.Random()``,
            and a new position in a forked child; with one given the position is kept
            there).

    Raises:
        ConfigError: ``rng`` is no random source (a seed given for
            ``random.Random(seed)``, the class itself; quoted).
    """

    __slots__ = ("__weakref__", "_endpoints", "_next")

    def __init__(self, rng: random.Random | None = None) -> None:
        check_rng("rng", rng, ("randrange",))
        self._endpoints: tuple[Endpoint, ...] = ()
        self._next = (rng if rng is not None else random.Random()).randrange(1 << 30)
        if rng is None:
            _rr_forked.add(self)

    def _forget_parent(self) -> None:
        """In a forked child: a new random position (see the class)."""
        self._next = int.from_bytes(os.urandom(4), "big") % (1 << 30)

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
        fallback: Endpoint | None = None  # idle, not excluded
        excluded: Endpoint | None = None  # ready, excluded
        excluded_idle: Endpoint | None = None
        for i in range(n):
            ep = eps[(start + i) % n]
            if ep.state is EndpointState.READY:
                if exclude and ep in exclude:
                    excluded = excluded or ep
                    continue
                # the turn goes on from the endpoint taken, not from the start: skipping
                # an unusable endpoint must not give the next one its turn as well
                self._next = (start + i + 1) % n
                return ep, noop_done
            if ep.state is EndpointState.IDLE:
                if exclude and ep in exclude:
                    excluded_idle = excluded_idle or ep
                else:
                    fallback = fallback or ep
        self._next = start + 1
        chosen = fallback or excluded or excluded_idle
        return (chosen, noop_done) if chosen is not None else None


# round robins with their default random source take a new position in a forked child
_rr_forked = reset_in_forked_child(RoundRobin)
