"""Stand-ins for the rate-limit tests: a servicer context as the key functions read it,
and whether the interceptor's inline check admits a call."""

from __future__ import annotations

import inspect
from typing import Any


class PeerContext:
    """What the rate-limit key functions read of a servicer context: ``peer()`` (a gRPC
    peer string, ``"ipv4:10.0.0.7:5000"`` by default) and ``invocation_metadata()``
    (``md``, none by default)."""

    def __init__(self, peer: Any = "ipv4:10.0.0.7:5000",
                 md: tuple[tuple[str, str], ...] = ()) -> None:
        self._peer = peer
        self._md = md

    def peer(self) -> Any:
        """The peer string given."""
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata given."""
        return self._md


def admitted(before: Any, peer: Any) -> bool:
    """Whether the interceptor's inline check ``before`` (``_before_for(method)``) admits a
    call from ``peer``: it returns None; a refusal's awaitable (a coroutine) is closed
    unrun and gives False."""
    got = before(PeerContext(peer))
    if got is None:
        return True
    assert inspect.iscoroutine(got)
    got.close()
    return False
