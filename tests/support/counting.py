"""Endpoints that count how often their state is read: the cost of a pick or a state
check measured by counting (an endpoint examined), not by timing."""

from __future__ import annotations

from collections.abc import Iterable

from meshkit.balancer import Endpoint, EndpointState
from meshkit.discovery import Instance


class _StateCounting(Endpoint):
    """An endpoint whose state reads call :meth:`_count` (the subclasses' counters)."""

    __slots__ = ()

    def _count(self) -> None:
        raise NotImplementedError

    # the endpoint's own state (the balancers' StateIndex follows it), reads counted
    @property  # type: ignore[override]
    def state(self) -> EndpointState:
        self._count()
        return Endpoint.state.__get__(self)  # type: ignore[no-any-return]

    @state.setter
    def state(self, value: EndpointState) -> None:
        Endpoint.state.__set__(self, value)  # type: ignore[attr-defined]


class CountedEndpoint(_StateCounting):
    """An endpoint that counts the reads of its state in :attr:`reads` (shared by every
    instance: reset it before the reads to count)."""

    __slots__ = ()
    reads = 0

    def _count(self) -> None:
        CountedEndpoint.reads += 1


class OwnCountedEndpoint(_StateCounting):
    """An endpoint that counts the reads of its own state in its :attr:`reads` (one
    counter per endpoint: :func:`take_reads` sums and resets a list's)."""

    __slots__ = ("reads",)

    def __init__(self, instance: Instance) -> None:
        self.reads = 0
        super().__init__(instance)

    def _count(self) -> None:
        self.reads += 1


def take_reads(eps: Iterable[OwnCountedEndpoint]) -> int:
    """The state reads of ``eps`` since the last call (their counters reset to 0)."""
    total = 0
    for ep in eps:
        total += ep.reads
        ep.reads = 0
    return total


def counted_endpoints(n: int, ready: int = 0) -> list[Endpoint]:
    """``n`` counting endpoints of service ``s`` (``e0000``...), the first ``ready``
    of them READY, the rest as made (IDLE)."""
    eps: list[Endpoint] = [CountedEndpoint(Instance(service="s", instance_id=f"e{i:04d}",
                                                    host="127.0.0.1", port=1000 + i))
                           for i in range(n)]
    for ep in eps[:ready]:
        ep.state = EndpointState.READY
    return eps
