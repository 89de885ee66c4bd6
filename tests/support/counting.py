"""Endpoints that count how often their state is read: the cost of a pick or a state
check measured by counting (an endpoint examined), not by timing."""

from __future__ import annotations

from meshkit.balancer import Endpoint, EndpointState
from meshkit.discovery import Instance


class CountedEndpoint(Endpoint):
    """An endpoint that counts the reads of its state in :attr:`reads` (shared by every
    instance: reset it before the reads to count)."""

    __slots__ = ()
    reads = 0

    @property  # type: ignore[override]
    def state(self) -> EndpointState:
        CountedEndpoint.reads += 1
        return Endpoint.state.__get__(self)  # type: ignore[no-any-return]

    @state.setter
    def state(self, value: EndpointState) -> None:
        Endpoint.state.__set__(self, value)  # type: ignore[attr-defined]


def counted_endpoints(n: int, ready: int = 0) -> list[Endpoint]:
    """``n`` counting endpoints of service ``s`` (``e0000``...), the first ``ready``
    of them READY, the rest as made (IDLE)."""
    eps: list[Endpoint] = [CountedEndpoint(Instance(service="s", instance_id=f"e{i:04d}",
                                                    host="127.0.0.1", port=1000 + i))
                           for i in range(n)]
    for ep in eps[:ready]:
        ep.state = EndpointState.READY
    return eps
