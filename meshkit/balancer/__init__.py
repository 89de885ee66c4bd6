"""Client-side load balancing: endpoints, balancers, outlier ejection and filters.

Pure policy, no I/O, injectable clocks and random sources; the balanced channel
(:func:`meshkit.dial`) binds them to grpc.aio sub-channels.

* :class:`Endpoint` (policy-only: instance, :class:`EndpointState`, counters) and the
  :class:`Balancer` protocol, ``pick(key, exclude) -> (endpoint, done) | None`` with
  ``done(code, latency_s)`` feeding each outcome back (go-kratos' ``selector``);
* balancers: :class:`P2C` over peak EWMA (the default; Finagle, Linkerd),
  :class:`RoundRobin` (gRPC's ``round_robin``), :class:`WeightedRoundRobin` (registry
  weights), :class:`RingHash` (consistent hashing on a request key); P2C, RoundRobin
  and WeightedRoundRobin slow-start endpoints added after the first discovery answer
  (``slow_start_s``: P2C's default 5 s, the others' off unless given);
* :class:`EjectingBalancer` with :class:`OutlierOptions`: outlier ejection in front of any
  balancer (Envoy's consecutive-failure detection);
* :class:`ZoneAwareBalancer`: the local zone's endpoints while one is READY, the other
  zones' otherwise, decided per call (Envoy's and Linkerd's locality failover), a share
  of the calls spilling over as local endpoints fail (Envoy's overprovisioning factor);
* filters run per discovery change: :class:`Subset`, :class:`PreferZone` (the local zone
  while an instance of it is registered, usable or not), or any callable
  (:data:`Filter`).

Example::

    opts = DialOptions(balancer=functools.partial(ZoneAwareBalancer, "a", RoundRobin),
                       filters=(Subset(meta={"version": "v2"}),))
"""

from __future__ import annotations

from meshkit.balancer._endpoint import Balancer, Done, Endpoint, EndpointState, noop_done
from meshkit.balancer._filters import Filter, PreferZone, Subset, apply_filters
from meshkit.balancer._outlier import EjectingBalancer, OutlierOptions, StreamDone
from meshkit.balancer._p2c import P2C, P2COptions, StreamPending
from meshkit.balancer._round_robin import RoundRobin
from meshkit.balancer._weighted import RingHash, WeightedRoundRobin
from meshkit.balancer._zone import ZoneAwareBalancer

__all__ = [
    "P2C",
    "Balancer",
    "Done",
    "EjectingBalancer",
    "Endpoint",
    "EndpointState",
    "Filter",
    "OutlierOptions",
    "P2COptions",
    "PreferZone",
    "RingHash",
    "RoundRobin",
    "StreamDone",
    "StreamPending",
    "Subset",
    "WeightedRoundRobin",
    "ZoneAwareBalancer",
    "apply_filters",
    "noop_done",
]
