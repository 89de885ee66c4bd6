"""Stand-ins for grpc.aio's servicer context where a test drives meshkit's server
telemetry without a call."""

from __future__ import annotations


class ServedContext:
    """What the server's telemetry reads from a servicer context, without a call: no
    metadata, a loopback peer, no code set, 5 s left."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def code(self) -> None:
        return None

    def time_remaining(self) -> float:
        return 5.0
