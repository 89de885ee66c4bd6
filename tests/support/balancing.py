"""Pure balancer policies driven by hand: a monotonic clock moved by the test and READY
endpoints with no sub-channel (the balancer tests' shared set-up), and a balancer that
sends each attempt where the test says."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from meshkit.balancer import Done, Endpoint, EndpointState, noop_done
from meshkit.discovery import Instance


class Clock:
    """A monotonic clock moved by hand (``clock.t += 1.0``), starting at 100 s."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ready_endpoint(key: str) -> Endpoint:
    """A READY endpoint of service ``svc`` with instance id ``key`` (port from its first
    letter)."""
    e = Endpoint(Instance(service="svc", instance_id=key, host="127.0.0.1",
                          port=2000 + ord(key[0])))
    e.state = EndpointState.READY
    return e


class Prefer:
    """A balancer that picks the endpoint with instance id ``first`` unless this call
    tried it already (``exclude``), else another READY one in the order given: the test
    decides where each attempt of a call goes."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.endpoints: list[Endpoint] = []

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        for ep in sorted(self.endpoints, key=lambda e: e.key != self.first):
            if ep not in exclude:
                return ep, noop_done
        return None
