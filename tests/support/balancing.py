"""Pure balancer policies driven by hand: a monotonic clock moved by the test and READY
endpoints with no sub-channel (the balancer tests' shared set-up)."""

from __future__ import annotations

from meshkit.balancer import Endpoint, EndpointState
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
