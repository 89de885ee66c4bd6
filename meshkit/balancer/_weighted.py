"""Weighted round robin and ring-hash balancers (pure policy, no I/O)."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Collection, Sequence

from meshkit.balancer._endpoint import Done, Endpoint, EndpointState, noop_done
from meshkit.errors import ConfigError

__all__ = ["RingHash", "WeightedRoundRobin"]

_FAILING = EndpointState.FAILING


class WeightedRoundRobin:
    """Smooth weighted round robin (nginx's algorithm) over ``Instance.weight``.

    Each pick adds every usable endpoint's weight to its running score, takes the highest
    and subtracts the total: an endpoint of weight 3 next to one of weight 1 gets 3 of every
    4 calls, interleaved (a a b a, not a a a b). Weights come from the registry (Consul's
    ``Weights.Passing``). Endpoints in ``FAILING`` are skipped; ``exclude`` is avoided while
    another endpoint is usable. Keeps no latency statistics (``done`` is a no-op).
    """

    __slots__ = ("_current", "_eps")

    def __init__(self) -> None:
        self._eps: tuple[Endpoint, ...] = ()
        self._current: dict[str, int] = {}

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list."""
        self._eps = tuple(endpoints)
        self._current = {ep.key: self._current.get(ep.key, 0) for ep in endpoints}

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """Next endpoint by smooth weighted round robin, or ``None`` if none is usable."""
        for avoid in ((exclude, ()) if exclude else ((),)):
            best: Endpoint | None = None
            total = 0
            cur = self._current
            for ep in self._eps:
                if ep.state is _FAILING or (avoid and ep in avoid):
                    continue
                w = ep.instance.weight
                total += w
                cur[ep.key] += w
                if best is None or cur[ep.key] > cur[best.key]:
                    best = ep
            if best is not None:
                cur[best.key] -= total
                return best, noop_done
        return None


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class RingHash:
    """Consistent hashing on a request key (Karger et al.; Envoy's ``RING_HASH``).

    Each endpoint owns ``replicas_per_weight * weight`` points on a 64-bit ring; a call
    with key ``k`` goes to the first usable endpoint clockwise from ``hash(k)``, so the same
    key keeps landing on the same endpoint (cache affinity) and only ~1/N of keys move when
    an endpoint joins or leaves. A call without a key goes to a random usable endpoint.

    Args:
        replicas_per_weight: ring points per unit of weight (default 100).
        rng: random source for keyless calls.

    Raises:
        ConfigError: ``replicas_per_weight < 1``.
    """

    __slots__ = ("_eps", "_owners", "_points", "_replicas", "_rng")

    def __init__(self, replicas_per_weight: int = 100, rng: random.Random | None = None) -> None:
        if replicas_per_weight < 1:
            raise ConfigError(f"replicas_per_weight must be >= 1, got {replicas_per_weight!r}")
        self._replicas = replicas_per_weight
        self._rng = rng or random.Random()
        self._eps: tuple[Endpoint, ...] = ()
        self._points: list[int] = []
        self._owners: list[Endpoint] = []

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Rebuild the ring for ``endpoints``."""
        ring = sorted(
            (_hash64(f"{ep.key}#{i}"), ep.key, ep)
            for ep in endpoints
            for i in range(self._replicas * ep.instance.weight)
        )
        self._points = [p for p, _, _ in ring]
        self._owners = [ep for _, _, ep in ring]
        self._eps = tuple(endpoints)

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """The owner of ``key`` on the ring (skipping failing/excluded), or ``None``."""
        if not self._eps:
            return None
        if key is None:
            usable = [e for e in self._eps if e.state is not _FAILING and e not in exclude]
            return (self._rng.choice(usable), noop_done) if usable else None
        n = len(self._points)
        start = bisect.bisect(self._points, _hash64(key))
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
