"""Endpoint filters: which discovered instances a channel balances over (pure, no I/O).

A filter takes the instances discovery returned and gives back those the balancer may use,
as go-kratos' ``selector.NodeFilter`` does. Filters run once per discovery change, never per
call, in the order given in ``DialOptions.filters``. Two are built in:

* :class:`Subset`: only instances whose registry meta and tags match (a version subset,
  a canary pool);
* :class:`PreferZone`: only the instances of one zone (meta ``zone``) while any of them
  is *registered*, otherwise all. Decided per discovery answer, it cannot fail over from
  local instances that are registered but cannot take calls (partitioned, wedged, within
  a crashed one's TTL, ejected); :class:`~meshkit.balancer.ZoneAwareBalancer` decides per
  call, by connectivity and ejection (Envoy's and Linkerd's locality failover).

Any callable ``(Sequence[Instance]) -> list[Instance]`` is a filter too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshkit._config import check_string_map, check_strings
from meshkit.discovery import Instance
from meshkit.errors import ConfigError

__all__ = ["Filter", "PreferZone", "Subset", "apply_filters"]

Filter = Callable[[Sequence[Instance]], list[Instance]]
"""``filter(instances) -> instances to use``; called once per discovery change."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    """Keep only instances whose registry ``meta`` has every value in ``meta`` and that
    carry every tag in ``tags``, e.g. ``Subset(meta={"version": "v2"})``.

    Args:
        meta: required ``{key: value}`` pairs of ``Instance.meta`` (default none).
        tags: required ``Instance.tags`` (default none).

    Raises:
        ConfigError: neither ``meta`` nor ``tags`` given, ``meta`` not a mapping of
            strings to strings, or ``tags`` not a collection of strings (a bare string
            included): registry meta and tags are strings, so anything else would match
            no instance (quoted).
    """

    meta: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", check_strings("Subset tags", self.tags))
        object.__setattr__(self, "meta", check_string_map("Subset meta", self.meta))
        if not self.meta and not self.tags:
            raise ConfigError("Subset needs meta or tags (an empty subset keeps everything)")

    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        """The instances that match."""
        meta, tags = self.meta.items(), self.tags
        return [i for i in instances
                if all(i.meta.get(k) == v for k, v in meta) and all(t in i.tags for t in tags)]


@dataclass(frozen=True, slots=True)
class PreferZone:
    """Prefer the instances whose meta ``zone`` equals ``zone``.

    In ``DialOptions.filters`` the balanced channel does not run it per discovery answer:
    it turns it into a :class:`~meshkit.balancer.ZoneAwareBalancer` around
    ``DialOptions.balancer`` (:func:`~meshkit.balancer._zone.split_zone_preference`),
    which decides per call: the local zone's endpoints while one is READY and in
    rotation, else the other zones' (Envoy's and Linkerd's locality failover), so a
    local instance that is registered but cannot take calls (a partition, a wedged
    process that still heartbeats, an ejected outlier) does not fail the calls while
    another zone is healthy.

    Called as a plain filter (:func:`apply_filters`, or a filter list of your own), it
    keeps only the local zone's instances while the list holds at least one, else every
    instance (a zone with no instance registered fails over to the others rather than to
    nothing); that is discovery-time only, with no failover on health.

    Args:
        zone: the local zone, e.g. ``"eu-west-1a"``.

    Raises:
        ConfigError: an empty zone.
    """

    zone: str

    def __post_init__(self) -> None:
        if not isinstance(self.zone, str) or not self.zone:
            raise ConfigError(f"PreferZone zone must be a non-empty string, got {self.zone!r}")

    def __call__(self, instances: Sequence[Instance]) -> list[Instance]:
        """The local zone's instances if any, else all."""
        local = [i for i in instances if i.meta.get("zone") == self.zone]
        return local if local else list(instances)


def apply_filters(filters: Sequence[Filter], instances: Sequence[Instance]) -> list[Instance]:
    """Run ``filters`` in order over ``instances`` (sorted by instance id first, so filters
    see a stable order)."""
    chosen = sorted(instances, key=lambda i: i.instance_id)
    for f in filters:
        chosen = list(f(chosen))
    return chosen
