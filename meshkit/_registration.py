"""Whether meshkit registers gRPC methods with grpc (client calls and server handlers).

grpc.aio's registered methods cost more per call than unregistered ones on both sides
(``python -m benchmarks.instructions``): a server's accept loop awaits one request future
per registered method before every incoming call, and a client call on a registered
method enters grpc's observability plugin lookup once more (10-17k instructions per call
in raw grpc.aio 1.85 at one caller). What registration buys is per-method labels in a grpc
observability plugin's metrics (grpcio-observability, grpcio-csm-observability label the
others' method ``"other"``), so meshkit registers methods only while such a plugin is
active.
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
