"""Zone-aware balancing: the local zone's endpoints while they are healthy enough, a
share of the calls to the other zones in proportion as they are not (Envoy's priority
spillover), all of them when no local endpoint can take the call, decided per call
(pure policy, no I/O).

Envoy's zone-aware routing and locality failover, and gRPC's priority failover (gRFC
A56), send traffic to another locality when the local one has no *healthy* host, not
only when it has none registered. :class:`~meshkit.balancer.PreferZone`, a
discovery filter, cannot: it runs when discovery changes, and while the registry lists
a local instance the balancer never sees the other zones, so a local instance that is
registered but cannot take calls (a network partition, a wedged process that still
heartbeats, a crash inside its registration's TTL) fails every call ``UNAVAILABLE``
while another zone is healthy. :class:`ZoneAwareBalancer` wraps a balancer per zone
group and chooses at each pick, from the endpoints' connectivity and, under outlier
ejection (it sits inside :class:`~meshkit.balancer.EjectingBalancer`, which hands it
only the endpoints in rotation), their ejection.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Callable, Collection, Sequence

import grpc

from meshkit._config import check_number, check_rng
from meshkit._fork import ForkSafeRandom
from meshkit.balancer._endpoint import Balancer, Done, Endpoint, EndpointState, StateIndex
from meshkit.balancer._filters import Filter, PreferZone
from meshkit.balancer._p2c import P2C
from meshkit.errors import ConfigError

__all__ = ["ZoneAwareBalancer", "split_zone_preference"]

_READY = EndpointState.READY
_FAILING = EndpointState.FAILING
_CANCELLED = grpc.StatusCode.CANCELLED

Pick = Callable[[str | None, Collection[Endpoint]], tuple[Endpoint, Done] | None]


class ZoneAwareBalancer:
    """Balances over the endpoints of the local zone (registry meta ``zone`` equal to
    ``zone``) while one of them is READY, and over the other zones' endpoints when none
    is; an endpoint is the local zone's by the meta of its latest registration.

    Each pick asks the local zone's balancer first. Its pick stands when the endpoint is
    READY (connected) and not one this call tried already (``exclude``: a retry), or when
    another local endpoint is (the inner balancer's choice of a connecting one, e.g. a
    ring hash's key owner, is kept). Otherwise the other zones' balancer picks too and
    the better of the two takes the call: untried before tried, then READY before
    connecting, the local zone on a tie; the other pick is settled as no outcome
    (``done(CANCELLED, 0.0)``, as the channel settles an abandoned pick). Whether
    another local endpoint is READY is read from the local endpoints kept by state
    (O(1), O(READY) for a retry), not a scan of the zone per pick. So:

    * every local endpoint ``FAILING`` (connection refused or lost), ejected, or not
      registered: the call goes to another zone;
    * local endpoints still connecting while another zone has a READY one: to the READY
      one (gRPC's priority policy waits up to 10 s for a connecting priority; a local
      endpoint behind a partition may stay connecting for its whole connect timeout);
      before any endpoint connects, to the local zone;
    * a retry whose call tried every usable local endpoint: to an untried endpoint of
      another zone, since the ``exclude`` preference of :class:`~meshkit.balancer.Balancer`
      asks for a different endpoint; with none, to the local one again;
    * no endpoint usable anywhere: ``None`` (under outlier ejection, panic routing then
      takes an ejected endpoint whose connection is not failing);
    * some local endpoints ``FAILING``: the local zone keeps
      ``min(1, overprovisioning_factor * healthy / local)`` of the calls (``healthy``:
      its endpoints not ``FAILING``; an IDLE one, whose unused connection a server
      closed, is healthy) and the rest go to the other zones, as Envoy's priority levels
      spill over (its default factor 1.4: 10 local endpoints keep every call while 8
      are healthy, 84 % with 6, 14 % with 1), instead of every local call on the few
      endpoints left. A call drawn to spill over stays local when the other zones'
      pick is ``FAILING`` or there is none; a retry (``exclude``) follows the rules
      above only. An endpoint ejected by outlier ejection counts in ``local`` and not
      in ``healthy``, as Envoy counts an ejected host unhealthy for its locality's
      health: :class:`~meshkit.balancer.EjectingBalancer` hands this balancer the
      endpoints in rotation (``update``) and every endpoint (:meth:`census`), so a
      local zone with 7 of 10 endpoints ejected keeps 42 % of the calls, not all of
      them on the 3 left.

    The common pick (a READY local endpoint) costs one inner pick and two tests. Give it
    as the channel's balancer factory (the channel puts outlier ejection around it)::

        DialOptions(balancer=functools.partial(ZoneAwareBalancer, "eu-west-1a"))
        DialOptions(balancer=functools.partial(ZoneAwareBalancer, "a", RoundRobin))

    Args:
        zone: the local zone, e.g. ``"eu-west-1a"``.
        inner: factory of the balancer used within each group (called twice: one for
            the local zone's endpoints, one for the others'); default
            :class:`~meshkit.balancer.P2C`.
        overprovisioning_factor: how far the local zone's healthy share is scaled up
            before calls spill over, >= 1 (default 1.4, Envoy's 140 %); ``math.inf``:
            no proportional spillover (all-or-nothing, as before).
        rng: random source of the spillover draws (default a new ``random.Random``,
            reseeded in a forked child).

    Raises:
        ConfigError: an empty zone, or one that is not a string; an ``inner`` that is
            not callable (a balancer given instead of its factory); an
            ``overprovisioning_factor`` below 1 or no number; ``rng`` no random source
            (quoted).
    """

    __slots__ = ("_by_state", "_factor", "_local", "_local_all", "_local_eps", "_local_out",
                 "_local_stream", "_other", "_other_eps", "_other_stream", "_rank", "_rng",
                 "zone")

    def __init__(self, zone: str, inner: Callable[[], Balancer] = P2C, *,
                 overprovisioning_factor: float = 1.4,
                 rng: random.Random | None = None) -> None:
        check_number("overprovisioning_factor", overprovisioning_factor, low=1.0,
                     finite=False)
        check_rng("rng", rng, ("random",))
        self._factor = float(overprovisioning_factor)
        self._rng = rng if rng is not None else ForkSafeRandom()
        if not isinstance(zone, str) or not zone:
            raise ConfigError(
                f"ZoneAwareBalancer zone must be a non-empty string, got {zone!r}")
        if not callable(inner):
            raise ConfigError("ZoneAwareBalancer inner must be a factory of Balancers, called"
                              " once per zone group (e.g. RoundRobin, or"
                              f" lambda: P2C(P2COptions(...))), got {inner!r}")
        self.zone = zone
        self._local = inner()
        self._other = inner()
        self._local_eps: tuple[Endpoint, ...] = ()
        self._other_eps: tuple[Endpoint, ...] = ()
        # each endpoint's place in the last census (its order is every later list's):
        # where restore puts an endpoint back in its zone group
        self._rank: dict[str, int] = {}
        # the local endpoints of the last census (ejected ones included; None: no census,
        # a balancer used without outlier ejection), and how many of them update left
        # out (ejected: unhealthy in the spillover share)
        self._local_all: frozenset[str] | None = None
        self._local_out = 0
        # the local endpoints by state (kept by their state's setter): whether another
        # local one is READY is O(READY), not a scan of the zone at each pick
        self._by_state = StateIndex()
        # a streaming-response call is picked by the inner pick_stream where there is one
        self._local_stream: Pick = getattr(self._local, "pick_stream", None) or self._local.pick
        self._other_stream: Pick = getattr(self._other, "pick_stream", None) or self._other.pick

    @property
    def local(self) -> Balancer:
        """The balancer over the local zone's endpoints."""
        return self._local

    @property
    def other(self) -> Balancer:
        """The balancer over the other zones' endpoints."""
        return self._other

    def cold_start(self, on: bool) -> None:
        """Hand the pool's word on the first discovery answer (``on``: its updates are
        coming in; see :meth:`P2C.cold_start <meshkit.balancer.P2C.cold_start>`) to both
        zones' balancers, where they take it."""
        for inner in (self._local, self._other):
            hook = getattr(inner, "cold_start", None)
            if hook is not None:
                hook(on)

    def census(self, endpoints: Sequence[Endpoint]) -> None:
        """Every endpoint of the service, those out of rotation (ejected) included; the
        next :meth:`update` gives those in rotation. A local endpoint of the census that
        ``update`` leaves out counts as unhealthy in the spillover share (class
        docstring; Envoy counts an ejected host unhealthy). Called by
        :class:`~meshkit.balancer.EjectingBalancer` before each update of its full list
        (the optional ``census`` of :class:`~meshkit.balancer.Balancer`); each zone
        group's census goes on to its inner balancer where that takes one. O(n).

        Args:
            endpoints: every endpoint, ejected or not."""
        local, other = self._split(endpoints)
        self._local_all = frozenset(ep.key for ep in local)
        self._rank = {ep.key: i for i, ep in enumerate(endpoints)}
        for inner, group in ((self._local, local), (self._other, other)):
            hook = getattr(inner, "census", None)
            if hook is not None:
                hook(group)

    def observe(self, ep: Endpoint, code: grpc.StatusCode, latency_s: float) -> None:
        """Hand the outcome of a call sent to ``ep`` not through :meth:`pick` (the
        half-open probe of :class:`~meshkit.balancer.EjectingBalancer`; the optional
        ``observe`` of :class:`~meshkit.balancer.Balancer`) to the inner balancer of
        ``ep``'s zone group, where that takes it.

        Args:
            ep: the endpoint the call went to.
            code: its status code.
            latency_s: its latency, seconds (negative: no sample)."""
        inner = self._local if ep in self._by_state else self._other
        hook = getattr(inner, "observe", None)
        if hook is not None:
            hook(ep, code, latency_s)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint list: each inner balancer gets its zone group's endpoints,
        in the order given. Local endpoints of the last :meth:`census` missing here are
        counted as ejected (unhealthy)."""
        local, other = self._split(endpoints)
        self._local.update(local)
        self._other.update(other)
        self._local_eps = tuple(local)
        self._other_eps = tuple(other)
        self._by_state.track(local)
        known = self._local_all
        self._local_out = (0 if known is None else
                           max(0, len(known) - sum(1 for ep in local if ep.key in known)))

    def remove(self, ep: Endpoint) -> None:
        """Take ``ep`` out of the list, as :meth:`update` with the list without it would
        (the optional ``remove`` of :class:`~meshkit.balancer.Balancer`:
        :class:`~meshkit.balancer.EjectingBalancer` hands an ejected endpoint over so):
        its zone group's balancer is handed it (its own ``remove``, else an ``update``
        of the group), and a local endpoint of the last :meth:`census` counts as
        ejected (unhealthy) in the spillover share. O(1) but for copies of the group's
        list (in C) and the inner balancer's own. An endpoint not in the list is
        ignored.

        Args:
            ep: the endpoint to take out (the object in the list)."""
        local = ep.instance.meta.get("zone") == self.zone
        eps = self._local_eps if local else self._other_eps
        try:
            i = eps.index(ep)
        except ValueError:
            return
        rest = eps[:i] + eps[i + 1:]
        inner = self._local if local else self._other
        hook = getattr(inner, "remove", None)
        if ep in rest or hook is None:  # (listed twice, or no hook: the group's update)
            self.update([e for e in (*self._local_eps, *self._other_eps) if e is not ep])
            return
        hook(ep)
        if local:
            self._local_eps = rest
            self._by_state.discard(ep)
            known = self._local_all
            if known is not None and ep.key in known:
                self._local_out += 1
        else:
            self._other_eps = rest

    def restore(self, ep: Endpoint, at: int) -> None:
        """Put ``ep`` back in the list, as :meth:`update` with the list with it would
        (the optional ``restore`` of :class:`~meshkit.balancer.Balancer`:
        :class:`~meshkit.balancer.EjectingBalancer` hands an endpoint back from an
        ejection so): its zone group's balancer is handed it at its place in the
        group, the order of the last :meth:`census` (its own ``restore``, else an
        ``update`` of the group). Without a census that orders it (a balancer used
        alone), or with the endpoint in the list already, it is put at ``at`` by
        :meth:`update`. O(log n) but for copies of the group's list (in C) and the
        inner balancer's own.

        Args:
            ep: the endpoint to put back.
            at: its index in the new list (the zone groups together), 0 to
                ``len(list)``."""
        local = ep.instance.meta.get("zone") == self.zone
        eps = self._local_eps if local else self._other_eps
        inner = self._local if local else self._other
        hook = getattr(inner, "restore", None)
        rank = self._rank
        j = -1
        if ep.key in rank and ep not in eps:
            try:
                j = bisect.bisect_left(eps, rank[ep.key], key=lambda e: rank[e.key])
            except KeyError:  # (one listed after the census: its order is unknown)
                j = -1
        if j < 0 or hook is None:
            rest = [e for e in (*self._local_eps, *self._other_eps) if e is not ep]
            if ep.key in rank and all(e.key in rank for e in rest):  # the census's order
                self.update(sorted([*rest, ep], key=lambda e: rank[e.key]))
            else:
                self.update([*rest[:at], ep, *rest[at:]])
            return
        hook(ep, j)
        if local:
            self._local_eps = (*eps[:j], ep, *eps[j:])
            self._by_state.add(ep)
            known = self._local_all
            if known is not None and ep.key in known:
                self._local_out = max(0, self._local_out - 1)
        else:
            self._other_eps = (*eps[:j], ep, *eps[j:])

    def _split(self, endpoints: Sequence[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
        """``endpoints`` split into the local zone's and the others', in order."""
        zone = self.zone
        local: list[Endpoint] = []
        other: list[Endpoint] = []
        for ep in endpoints:
            (local if ep.instance.meta.get("zone") == zone else other).append(ep)
        return local, other

    def pick(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """An endpoint of the local zone while one can take the call, else of another
        zone (see the class docstring); ``None`` when none is usable. ``key`` and
        ``exclude`` go to the inner balancers."""
        return self._choose(self._local.pick, self._other.pick, key, exclude)

    def pick_stream(
        self, key: str | None = None, exclude: Collection[Endpoint] = ()
    ) -> tuple[Endpoint, Done] | None:
        """:meth:`pick` for a streaming-response call, through the inner balancers'
        ``pick_stream`` where they have one (its outcome callback then has
        ``responded()``, see :class:`~meshkit.balancer.Balancer`), else their ``pick``."""
        return self._choose(self._local_stream, self._other_stream, key, exclude)

    def snapshot(self) -> list[dict[str, float | int | str]]:
        """The inner balancers' debugging rows (``snapshot()``, as
        :meth:`P2C.snapshot <meshkit.balancer.P2C.snapshot>`), local zone first; none from
        an inner balancer without one."""
        rows: list[dict[str, float | int | str]] = []
        for inner in (self._local, self._other):
            snapshot = getattr(inner, "snapshot", None)
            if snapshot is not None:
                rows.extend(snapshot())
        return rows

    def _choose(self, local: Pick, other: Pick, key: str | None,
                exclude: Collection[Endpoint]) -> tuple[Endpoint, Done] | None:
        n = len(self._local_eps)
        if n and not exclude and ((failing := self._by_state.count(_FAILING))
                                  or self._local_out):
            # some local endpoints failing or ejected: spill over in proportion (class
            # docstring); the ejected count in the zone's total, not its healthy
            keep = (n - failing) * self._factor
            total = n + self._local_out
            if 0 < keep < total and self._rng.random() * total >= keep:
                alt = other(key, exclude)
                if alt is not None:
                    if alt[0].state is not _FAILING:
                        return alt
                    alt[1](_CANCELLED, 0.0)  # not sent: no outcome
        got = local(key, exclude) if n else None
        if got is not None:
            ep = got[0]
            if ep.state is _READY and not (exclude and ep in exclude):
                return got
            ready = self._by_state.of(_READY)
            if ready and (not exclude or any(e not in exclude for e in ready)):
                return got  # the local balancer's choice among usable local endpoints
        alt = other(key, exclude)
        if alt is None:
            return got
        if got is None:
            return alt
        if _rank(alt[0], exclude) < _rank(got[0], exclude):
            got, alt = alt, got
        alt[1](_CANCELLED, 0.0)  # not sent: no outcome
        return got


def _rank(ep: Endpoint, exclude: Collection[Endpoint]) -> tuple[bool, int]:
    """Order of preference: untried before tried, then READY before connecting."""
    return bool(exclude) and ep in exclude, int(ep.state)


def split_zone_preference(
    filters: Sequence[Filter], balancer: Callable[[], Balancer],
) -> tuple[tuple[Filter, ...], Callable[[], Balancer]]:
    """Move the :class:`~meshkit.balancer.PreferZone` filters of ``filters`` to the
    balancer: the other filters, and a factory of ``balancer`` wrapped in a
    :class:`ZoneAwareBalancer` per zone (the first one outermost), so that the zone
    preference is decided per call, with failover on health, rather than per discovery
    answer. For the balanced channel, which builds its balancer and its discovery filters
    from ``DialOptions.filters`` and ``DialOptions.balancer``; ``filters`` and
    ``balancer`` come back unchanged without a ``PreferZone``."""
    zones = [f.zone for f in filters if isinstance(f, PreferZone)]
    if not zones:
        return tuple(filters), balancer
    kept = tuple(f for f in filters if not isinstance(f, PreferZone))
    factory = balancer
    for zone in reversed(zones):
        factory = functools.partial(ZoneAwareBalancer, zone, factory)
    return kept, factory
