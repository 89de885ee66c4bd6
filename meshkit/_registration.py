"""Whether meshkit registers gRPC methods with grpc (client calls and server handlers).

grpc.aio's registered methods cost more per call than unregistered ones on both sides
(raw grpc.aio 1.85, one caller, ``benchmarks/RESULTS.md``): a server's accept loop awaits
one request future per registered method before every incoming call (about 6k
instructions per call per method), and a registered client call costs 11-18k
instructions more than an unregistered one (one more pass through grpc's
observability-plugin context manager, the rest in grpc's core). What registration buys
is per-method labels in a grpc observability plugin's metrics (grpcio-observability and
grpcio-csm-observability label the other methods ``"other"``), so meshkit registers
methods only while such a plugin is active. That is read when a server starts and when a
sub-channel's multicallable for a method is made: register the plugin before serving and
dialling.
"""

from __future__ import annotations

__all__ = ["grpc_observability_active"]


def grpc_observability_active() -> bool:
    """Whether a grpc observability plugin is registered (``grpc._observability``); ``True``
    when that private module cannot be read (keep grpc's own registration then)."""
    try:
        from grpc import _observability

        with _observability.get_plugin() as plugin:
            return plugin is not None
    except Exception:
        return True
