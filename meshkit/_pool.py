"""The balanced channel's transport half: :class:`EndpointPool`.

An endpoint pool follows a registry watch for one service, runs the endpoint filters,
keeps one grpc.aio sub-channel per endpoint and its connectivity, rebuilds sub-channels
when the client certificate is renewed, and hands the balancer the endpoint list. The
channel (:mod:`meshkit.channel`) keeps the options and the per-call path; the pool is
what it picks from (httpx's client/transport cut).

Endpoints that leave the registry are removed from the balancer at once and their
sub-channel is closed with a grace period (``drain_timeout_s``), so in-flight calls finish;
what still runs when the grace is up is cancelled, unary attempts that run in the
caller's task (:mod:`meshkit._inline`) included (the call then fails ``UNAVAILABLE``,
the connection taken away under it as in grpc-java: a response stream too, whether or
not it was being read, :attr:`EndpointPool.cut_calls`; a call cut by closing the channel
``CANCELLED``). A sub-channel replaced by
:meth:`EndpointPool.rebuild` (a renewed client certificate) of an endpoint that stays is
kept until its own last call ends, however long (a watch, a subscription), as grpc-go's
credential reloading leaves established connections alone; if its endpoint leaves
meanwhile, it gets that endpoint's ``drain_timeout_s``. An endpoint that leaves and comes
back at the same address within its grace (a flap) has its draining sub-channel kept
likewise, its calls not cut. Closing the pool cuts every such grace to its own.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from meshkit._tasks import cancel_and_wait
from meshkit.balancer import (
    Balancer,
    Done,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    Filter,
)
from meshkit.balancer._endpoint import StateIndex
from meshkit.discovery import Instance, Registry
from meshkit.errors import MeshRpcError, NoEndpointsError
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience._retry import HedgedAttempts, connection_ended, forget_endpoint

if TYPE_CHECKING:
    from meshkit.auth._probe import HandshakeDiagnosis

__all__ = ["EndpointPool"]

_log = structlog.get_logger("meshkit.channel")
# instances that left whose counters are kept (beside every present endpoint's), so that
# one coming back goes on counting; the oldest to leave are forgotten first
_RETIRED_MAX = 256
_DRAIN_POLL_S = 0.05  # how often a draining sub-channel checks for its last attempt
# ... after its first second of draining (a sub-channel kept after a rebuild may drain for
# hours under a long stream: a check a second, not twenty)
_DRAIN_POLL_SLOW_S = 1.0
# the backoff of a sub-channel build (or rebuild) retried after it failed: from 0.1 s,
# doubling to 5 s, each sleep jittered down to half of it
_BUILD_RETRY_FIRST_S = 0.1
_BUILD_RETRY_MAX_S = 5.0
_REPR_MAX = 200  # characters of a filter's repr in a status message
_REASON_WAIT_S = 1.0
"""Seconds at most a call no endpoint can take waits for the channel's handshake probes
under way, so that its error says why (``EndpointPool._all_failing_explained``)."""
# how long a call waits for the connection of an endpoint its balancer chose while
# another one is READY (a ring hash's key owner) before it is sent on anyway, seconds
# (gRFC A56's priority failover timer, 10 s, bounds a wait for a connection alike)
_CONNECTING_PICK_MAX_S = 10.0
BUILD_BATCH = 64
"""Sub-channels the pool builds in one turn of the event loop, for a discovery answer's
new endpoints (:meth:`EndpointPool.apply`) or a renewal (:meth:`EndpointPool.rebuild`):
the first batch at once, the rest a batch per turn (13-50 ms a turn on a loaded 2-core
box; 2,000 endpoints held the loop 240-340 ms for a first answer, 160-400 ms for a
renewal, built all at once)."""
# how often a call waiting for the first discovery answer looks whether the registry
# reports that it cannot be read (then it fails at once: a resolver error), seconds
UNREADABLE_POLL_S = 0.05
_READY_CONN = grpc.ChannelConnectivity.READY
_IDLE_CONN = grpc.ChannelConnectivity.IDLE
_FAILURE_CONN = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
_CONNECTIVITY = {
    grpc.ChannelConnectivity.READY: EndpointState.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: EndpointState.FAILING,
    grpc.ChannelConnectivity.SHUTDOWN: EndpointState.FAILING,
}


_TRACKERS_END_S = 0.25
LEAVING_HOLD_S = 10.0
"""Seconds an endpoint a draining refusal took out of picking (:meth:`EndpointPool.leaving`)
stays out when its connection goes on meanwhile: a meshkit server's stop follows its
refusal phase (0.5 s at most) and ends the connection long before, so only a connection
that outlives such a refusal (an L7 proxy passing one drained backend's answer through, a
server of another make refusing so and serving on) brings it back this way, where it was
kept out for as long as the connection lived."""
"""How long :meth:`EndpointPool.close` waits, once its sub-channels are closed, for their
state trackers to see them shut down (each ends at once then; past it, cancelled). Not
longer: grpc reports a sub-channel's ``SHUTDOWN`` to its watch only once no call object
holds it (one the application keeps, a hedged call in a server's pushback), which may be
never, and ``close()`` must end promptly (at 1 s it took the whole second whenever a call
was in flight); such a tracker is cancelled as before, its watch left armed."""


def short_repr(obj: object) -> str:
    """``repr(obj)`` cut to ``_REPR_MAX`` characters (a filter's, in a status message);
    ``<TypeName>`` when that ``repr`` raises (a bug of the filter's own must not fail
    the call, or the registry watch, with a Python error)."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= _REPR_MAX else text[:_REPR_MAX - 3] + "..."


class _Conn:
    """An endpoint's sub-channel and its multicallables by method; ``drain_until``: when
    what still runs on it is cancelled once it drains (``time.monotonic()`` seconds;
    ``math.inf``, from construction: once its calls have ended, however long). Set when
    the sub-channel is retired or replaced (:meth:`EndpointPool._drain`), before its
    drain task starts; from then on only ever lowered (an endpoint that left, the pool
    closed), never raised, whatever the order in which those land, except by
    :meth:`keep` (its endpoint came back). ``closing``: the drain ran out or was cut, what
    still runs is being cancelled (nothing keeps it any more)."""

    __slots__ = ("callables", "channel", "closing", "drain_until")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.callables: dict[str, Any] = {}
        self.drain_until = math.inf
        self.closing = False

    def keep(self) -> bool:
        """Undo the cut of a draining sub-channel whose endpoint came back at its address
        (:meth:`EndpointPool._came_back`): it is closed once its own calls have ended,
        however long (``drain_until`` back to ``math.inf``), as one a rebuild replaced;
        ``False`` when too late (:attr:`closing`: its calls are being cancelled)."""
        if self.closing:
            return False
        self.drain_until = math.inf
        return True

    def cut(self, grace_s: float | None, now: float | None = None) -> None:
        """Lower :attr:`drain_until` to ``grace_s`` seconds from ``now`` (``None``: the
        monotonic clock now; ``grace_s`` ``None`` or 0: at once; ``math.inf``: no cut);
        a lower one already set is kept."""
        if now is None:
            now = time.monotonic()
        until = now + grace_s if grace_s else now
        if until < self.drain_until:
            self.drain_until = until

    def calls_in_flight(self, ep: Endpoint) -> int:
        """The calls still running on this sub-channel: those grpc.aio's channel tracks
        for its ``close()`` (its ``_active_calls``: streams, and unary calls it runs) and
        the unary attempts :mod:`meshkit._inline` runs in their callers' tasks (each
        :class:`~meshkit._inline.InlineUnaryUnary` keeps its own). Where grpc.aio does not
        expose its calls, ``ep.in_flight``: every attempt of the endpoint, on any of its
        sub-channels (an upper bound)."""
        active = getattr(self.channel, "_active_calls", None)
        if active is None:
            return ep.in_flight
        n = len(active)
        for mc in self.callables.values():
            inline = getattr(mc, "_active", None)  # InlineUnaryUnary's calls in flight
            if inline is not None:
                n += len(inline)
        return n

    async def close(self, ep: Endpoint, grace_s: float | None,
                    mark_cut: Callable[[list[Any]], None] | None = None) -> None:
        """Close the sub-channel: wait up to ``grace_s`` seconds from now (``None`` or 0:
        none; ``math.inf``: until its calls have ended, however long) for its calls in
        flight to end, then cancel what still runs and destroy it; ``mark_cut`` (a drain,
        :meth:`EndpointPool._drain`) is first given grpc.aio's calls still running, which
        the cut cancels (their call objects then report the cut, not a caller's cancel:
        :attr:`EndpointPool.cut_calls`). A :attr:`drain_until`
        already lower (set when it was retired, or cut before this task started) is kept;
        the wait may be cut short meanwhile by lowering it (an endpoint that left).

        The grace is waited out here, not by grpc.aio's ``Channel.close(grace)``: a
        cancelled ``close(grace)`` leaves grpc's channel marked closing, and a later close
        then returns at once without cancelling its calls (``AioChannel.closed()``). And
        grpc.aio knows nothing of the unary attempts :mod:`meshkit._inline` runs in their
        callers' tasks. The calls are this sub-channel's own (:meth:`calls_in_flight`),
        so an endpoint under steady load on its new sub-channel does not hold the old
        one (after :meth:`EndpointPool.rebuild`). The sub-channel is closed whatever
        happens before (a ``grace_s`` :meth:`cut` refuses included: its error is raised
        once it is closed)."""
        start = time.monotonic()
        try:
            self.cut(grace_s, start)  # only lowers: a cut made before this task ran stands
            # polled: an event set by the last attempt's end would cost every call
            while ((left := self.drain_until - (now := time.monotonic())) > 0
                   and self.calls_in_flight(ep) > 0):
                step = _DRAIN_POLL_S if now - start < 1.0 else _DRAIN_POLL_SLOW_S
                await asyncio.sleep(min(step, left))
        finally:  # also when cancelled: nothing below suspends
            self.closing = True
            if mark_cut is not None:
                active = getattr(self.channel, "_active_calls", None)
                if active:
                    mark_cut([c for c in list(active) if not c.done()])
            for mc in self.callables.values():
                cancel_all = getattr(mc, "cancel_all", None)
                if cancel_all is not None:
                    cancel_all()
            await self.channel.close()  # grace None: cancels grpc's own calls, destroys


class EndpointPool:
    """The endpoints of one service and their sub-channels.

    Args:
        service: the mesh service name.
        registry: where its instances are discovered (watched from construction on).
        balancer: picks among the pool's endpoints; gets every endpoint-list change.
        filters: run on each discovery answer, in order (:mod:`meshkit.balancer._filters`).
        make_channel: ``make_channel(address) -> grpc.aio.Channel`` builds a sub-channel.
        drain_timeout_s: grace for calls in flight on an endpoint that left, seconds.
        resolve_timeout_s: how long a pick waits for the first discovery answer, seconds
            (a ``wait_for_ready`` call waits until its deadline instead).
        diagnosis: told of every connectivity change of an endpoint's sub-channel (its
            probe, when it returns one, runs as a pool task), and asked why an endpoint
            fails for the status of a call no endpoint can take
            (:class:`meshkit.auth._probe.HandshakeDiagnosis`, mTLS channels); default none.

    Must be built with an event loop running.
    """

    def __init__(self, service: str, registry: Registry, balancer: Balancer, *,
                 filters: Sequence[Filter], make_channel: Callable[[str], grpc.aio.Channel],
                 drain_timeout_s: float, resolve_timeout_s: float,
                 diagnosis: HandshakeDiagnosis | None = None) -> None:
        self.service = service
        self.diagnosis = diagnosis
        self.registry = registry
        self.balancer = balancer
        # a streaming call is picked by pick_stream where the balancer has one (its
        # outcome callback hears of a response stream's first message; a half-open probe
        # that is a stream, whose server may say nothing for long, has a bound)
        self._pick_stream = getattr(balancer, "pick_stream", None) or balancer.pick
        self._filters = tuple(filters)
        # instances of the last discovery answer, before the filters (a call that finds
        # no endpoint says the filters left none of them, not that none is registered)
        self._discovered = 0
        # a filter that raised on the last discovery answer: its repr and the error's
        # type, for the status of a call that finds no endpoint (None: the filters ran)
        self._filter_failure: str | None = None
        self._make_channel = make_channel
        self._drain_s = drain_timeout_s
        self._resolve_s = resolve_timeout_s
        self.endpoints: dict[str, Endpoint] = {}
        # self.endpoints by state, kept by their state's setter (ready_count: O(1))
        self._by_state = StateIndex()
        self.conns: dict[str, _Conn] = {}
        self.history: dict[str, Endpoint] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_tasks: dict[str, asyncio.Task[None]] = {}
        self._draining: set[asyncio.Task[None]] = set()  # retired sub-channels' grace
        # sub-channels replaced by rebuild() and still draining, by endpoint key (cut to
        # drain_timeout_s if their endpoint leaves)
        self._replaced: dict[str, set[_Conn]] = {}
        # the sub-channel of an endpoint that left, still draining, and its address, by
        # endpoint key: kept on if the same instance comes back there (_came_back)
        self._left: dict[str, tuple[str, _Conn]] = {}
        self.resolved = asyncio.Event()
        self._changed = asyncio.Event()
        self.closed = False
        # ``resolved`` set and not ``closed``, as one attribute: a call picks at once
        # (MeshChannel's attempts read it; else it waits in pick_slow). Set by
        # _mark_resolved, cleared for good by close and the loop-end close
        self.picking = False
        # set (a plain assignment, from any thread) by a channel collected without
        # close() (MeshChannel.__del__), whose close is then on its way to the pool's
        # loop: nothing more is built meanwhile (_add, _rebuild_one: its sub-channel
        # factory, called through a weak reference, can build none), and not logged
        self.dropped = False
        # grpc.aio calls (streams) still running on a sub-channel when its drain ran out
        # (an endpoint that left, a replaced sub-channel's endpoint that left): cancelled
        # by the mesh, not by their callers, so their call objects report that cut
        # (UNAVAILABLE) whether or not anyone was reading them (meshkit._calls); not
        # those a close() of the pool cancels (CANCELLED). Weak: gone with the calls.
        self.cut_calls: weakref.WeakSet[Any] = weakref.WeakSet()
        self.watch_errors = 0
        # sub-channels that could not be built (make_channel raised): counted once per
        # endpoint and address (as logged), and the instance and last error by instance id
        # of those kept out of the pool for it (a build is tried again at each discovery
        # answer, and by _retry_builds with a backoff meanwhile)
        self.sub_channel_errors = 0
        self._unbuilt: dict[str, tuple[Instance, str]] = {}  # key: (instance, error)
        # the first discovery answer with endpoints is still coming in (its batches:
        # _add_rest; an empty answer before it leaves the cold start on): the
        # balancer is told so (its optional cold_start(on)), and slow-starts none of it
        # whatever connected meanwhile; None: not begun yet
        self._cold: bool | None = None
        # the registry's status() takes this pool's service (_own_status)
        self._status_takes_service = True
        self._cold_start: Callable[[bool], object] | None = getattr(
            balancer, "cold_start", None)
        # endpoints whose rebuild() failed (they keep their current sub-channel, with the
        # old credentials): retried by _retry_builds until built or gone
        self._stale: set[str] = set()
        # endpoints whose sub-channel is left IDLE (its connection closed while unused)
        # until a call needs one: connect_idle
        self._idle: set[str] = set()
        # when (time.perf_counter()) each endpoint's connection last ended or was
        # replaced, by key: a draining refusal from before then says nothing of the
        # connection now (leaving); written on a change of connectivity, not per call
        self._ended_at: dict[str, float] = {}
        # the sub-channels rebuild() made for READY endpoints and still connecting, by
        # endpoint key, with the task that puts each in use once it is READY
        # (_connect_then_use); meanwhile calls go over the established connection
        self._pending: dict[str, tuple[_Conn, asyncio.Task[None]]] = {}
        self._retry_task: asyncio.Task[None] | None = None
        # the rest of a renewal's rebuild, a batch per loop turn (rebuild)
        self._rebuilding: asyncio.Task[None] | None = None
        # the instances of the last discovery answer still to be added, by instance id,
        # and the task adding them a batch per loop turn (apply, _add_rest)
        self._to_add: dict[str, Instance] = {}
        self._adding: asyncio.Task[None] | None = None
        # the sub-channels of a pool shut down by _abandon (its watch cancelled from
        # outside), closed by a close() made in the pool's own loop, if it still runs
        self._abandoned: list[tuple[_Conn, Endpoint]] = []
        self._loop = asyncio.get_running_loop()
        self._watch_task = self._loop.create_task(
            self._watch(), name=f"meshkit-watch-{service}")

    # -- discovery ----------------------------------------------------------------------
    async def _watch(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            if not self.closed:  # not by close(): the loop's end (asyncio.run's sweep)
                self._abandon()
            raise

    def _abandon(self) -> None:
        """The discovery watch was cancelled from outside, not by :meth:`close`: the event
        loop is ending (``asyncio.run()`` cancels the tasks left), the connectivity
        trackers with it. Shut the pool down as :meth:`close` does, synchronously (the
        sub-channels' loop is going: grpc destroys them when collected), so that the
        channel reads ``SHUTDOWN`` and a call made from a later loop fails ``CANCELLED``
        "closed", not with a future of the ended loop (``RuntimeError``) or "no endpoint
        is registered" from a watch that is gone."""
        _log.warning("channel not closed before its event loop ended; it is closed now "
                     "(dial() again in the next loop)", service=self.service)
        self.closed = True
        self.picking = False
        self.resolved.set()  # calls waiting for discovery: CANCELLED
        self.notify()
        self._stop_background()
        conns = self.conns
        self._abandoned += self._take_pending()
        for key, ep in self.endpoints.items():
            forget_endpoint(ep)
            if (conn := conns.get(key)) is not None:  # closed by a close() in this loop
                self._abandoned.append((conn, ep))
        self.endpoints.clear()
        self._by_state.track(())
        self.conns.clear()
        self.balancer.update([])
        for task in list(self._tasks):
            task.cancel()

    async def _follow(self) -> None:
        delay = 0.1
        while not self.closed:
            try:
                async for instances in self.registry.watch(self.service):
                    self.apply(instances)
                    delay = 0.1
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a registry bug must not kill the channel
                self.watch_errors += 1
                _log.warning("discovery watch failed; keeping last endpoints",
                             service=self.service, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def apply(self, instances: frozenset[Instance]) -> None:
        """Make the pool match a discovery answer (after the filters): endpoints that left
        are retired at once, and new ones are given their sub-channels
        :data:`BUILD_BATCH` at a time, the first batch at once (calls may be sent to
        them at once) and the rest a batch per turn of the event loop
        (:meth:`_add_rest`; a first answer of thousands of instances, or a scale-out by
        hundreds, held the loop for all of them), the balancer updated with each; what
        is still to be added when the next answer comes is what that answer lists."""
        # apply_filters, one filter at a time: one that raises (a bug of its own) is
        # named, and neither ends the watch (restarted, logged as discovery's failure,
        # again and again) nor leaves calls waiting for a discovery answer that came
        chosen = sorted(instances, key=lambda i: i.instance_id)
        self._discovered = len(instances)
        for f in self._filters:
            try:
                chosen = list(f(chosen))
            except Exception as exc:
                self._filter_failed(f, exc)
                # the last choice is kept, less what the registry no longer lists at its
                # address: a filter only narrows the answer, and a deregistered instance
                # (a server draining before it stops) must get no new call
                endpoints, unbuilt, to_add = self.endpoints, self._unbuilt, self._to_add
                chosen = [i for i in instances
                          if ((ep := endpoints.get(i.instance_id)) is not None
                              and ep.instance.address == i.address)
                          or ((u := unbuilt.get(i.instance_id)) is not None
                              and u[0].address == i.address)
                          or ((a := to_add.get(i.instance_id)) is not None
                              and a.address == i.address)]
                break
        else:
            self._filter_failure = None
        wanted = {i.instance_id: i for i in chosen}
        for key, ep in list(self.endpoints.items()):
            inst = wanted.get(key)
            # the same address: host and port compared first (Instance.address formats
            # host:port at each read, two per endpoint per answer: half an answer's cost
            # over thousands of endpoints), the address only for a host written otherwise
            old = ep.instance
            if inst is None or inst.port != old.port or (
                    inst.host != old.host and inst.address != ep.address):
                self._retire(ep)
            else:
                ep.instance = inst  # tags/meta/weight may change in place
        to_add = self._to_add  # (what an earlier answer left to add: this one decides)
        to_add.clear()
        built = 0
        for key, inst in wanted.items():
            if key not in self.endpoints:
                if built < BUILD_BATCH:
                    self._add(inst)
                    built += 1
                else:
                    to_add[key] = inst
        if to_add and (self._adding is None or self._adding.done()):
            self._adding = self.spawn(self._add_rest())
        if self._unbuilt:
            for key in [k for k in self._unbuilt if k not in wanted]:
                del self._unbuilt[key]
            self._retry_builds_later()
        self._forget()
        if self._cold is None and self._cold_start is not None:
            self._cold = True  # the first answer: its batches are no newcomers
            self._cold_start(True)
        self.balancer.update([self.endpoints[k] for k in sorted(self.endpoints)])
        if not to_add and self.endpoints:
            self._warm()
        self._mark_resolved()
        _log.debug("endpoints updated", service=self.service, endpoints=sorted(self.endpoints))
        self.notify()

    async def _add_rest(self) -> None:
        """Add the endpoints :meth:`apply` left to add, :data:`BUILD_BATCH` per turn of
        the event loop, the balancer updated and waiting calls woken after each batch;
        ends when none is left (a later answer may refill them), or with :meth:`close`
        (or once the channel was dropped: :attr:`dropped`)."""
        to_add = self._to_add
        while to_add and not self.closed:
            await asyncio.sleep(0)  # the loop's other work runs between two batches
            if self.closed or self.dropped:
                return
            for key in list(itertools.islice(to_add, BUILD_BATCH)):
                inst = to_add.pop(key)
                if key not in self.endpoints:
                    self._add(inst)
            if self._unbuilt:
                self._retry_builds_later()
            self.balancer.update([self.endpoints[k] for k in sorted(self.endpoints)])
            if not to_add and self.endpoints:
                self._warm()
            self.notify()

    def _warm(self) -> None:
        """The first discovery answer with endpoints is all in the balancer (an empty
        one, a service not registered yet, leaves the cold start to the next): endpoints
        added from now on are newcomers (its ``cold_start(False)``, once)."""
        if self._cold:
            self._cold = False
            if self._cold_start is not None:
                self._cold_start(False)

    def _filter_failed(self, f: Filter, exc: Exception) -> None:
        """Filter ``f`` raised ``exc`` on a discovery answer: the pool keeps its last
        endpoints (none before a first answer that filtered) that the answer still lists
        at their address (:meth:`apply`), logs it once (a warning with the error, until
        the filters run through again or fail otherwise), and a call that finds no
        endpoint fails at once saying so (the filter's ``repr`` and the error's type: no
        error text in a status), not after ``resolve_timeout_s`` for a discovery answer
        that came."""
        failure = f"endpoint filter {short_repr(f)} raised {type(exc).__name__}"
        if failure != self._filter_failure:
            _log.warning("endpoint filter failed; keeping last endpoints",
                         service=self.service, filter=short_repr(f), error=repr(exc))
        self._filter_failure = failure
        self._mark_resolved()
        self.notify()

    def _mark_resolved(self) -> None:
        """Discovery has answered (endpoints, or none, or a filter's failure): set
        ``resolved`` once, and ``picking`` with it (a closed pool's ``resolved`` is set
        already, by its close: an answer after the close changes neither)."""
        if not self.resolved.is_set():
            self.resolved.set()
            self.picking = True

    def _add(self, inst: Instance) -> bool:
        """Give a new endpoint its sub-channel and put it in the pool (``True``); one
        whose sub-channel cannot be built (``make_channel`` raises) is kept out
        (``False``), logged and counted once (until it leaves or changes address), and
        tried again at the next discovery answer and, meanwhile, by
        :meth:`_retry_builds` (the caller starts it: :meth:`_retry_builds_later`)."""
        key = inst.instance_id
        try:
            conn = _Conn(self._make_channel(inst.address))
        except Exception as exc:
            if self.dropped:  # the channel is gone (no factory): its close is coming
                return False
            error = f"{type(exc).__name__}: {exc}"
            failed = self._unbuilt.get(key)
            if failed is None or failed[0].address != inst.address:
                self.sub_channel_errors += 1
                _log.error("sub-channel could not be built; endpoint kept out",
                           service=self.service, instance_id=key, address=inst.address,
                           error=error)
            self._unbuilt[key] = (inst, error)
            return False
        if self._unbuilt:
            self._unbuilt.pop(key, None)
        ep = Endpoint(inst)
        before = self.history.get(key)
        if before is not None:
            # the same instance back (at a new address, or after it left): its counters go
            # on, so meshkit_client_endpoint_*_total never go backwards (what its old
            # sub-channel's attempts still in flight count from now on is not added)
            ep.calls, ep.failures = before.calls, before.failures
        self.endpoints[key] = ep
        self._by_state.add(ep)
        self.conns[key] = conn
        self.history[key] = ep
        self._state_tasks[key] = self.spawn(self._track_state(ep))
        if self._left:
            left = self._left.pop(key, None)
            if left is not None and left[0] == inst.address:
                self._came_back(key, left[1])
        return True

    def _came_back(self, key: str, conn: _Conn) -> None:
        """The instance of endpoint ``key`` left and came back at the same address while
        ``conn``, its sub-channel then, drained (a flap: a lease or TTL that lapsed under
        load and was renewed, a health check failed once): its server never went away,
        so the calls still running there (a watch, a subscription) are not cut when the
        grace of the departure runs out; ``conn``, and the sub-channels a rebuild had
        replaced for it, are kept until their own calls end, as a rebuild keeps them
        (cut again to ``drain_timeout_s`` if it leaves again). New calls go to the new
        sub-channel :meth:`_add` made."""
        replaced = self._replaced.get(key, set())
        for old in replaced:
            old.keep()
        if conn.keep():
            replaced.add(conn)
            self._replaced[key] = replaced

    def _retry_builds_later(self) -> None:
        """Start :meth:`_retry_builds` unless it runs (or the pool is closed)."""
        if (self._retry_task is None or self._retry_task.done()) and not self.closed:
            self._retry_task = self.spawn(self._retry_builds())

    async def _retry_builds(self) -> None:
        """While endpoints are kept out for a sub-channel that could not be built, or keep
        one a :meth:`rebuild` could not replace, try again with a backoff (0.1 s doubling
        to 5 s, jittered): a transient failure (a process briefly out of file
        descriptors) does not keep the only endpoint out until a discovery answer that a
        stable registry never sends, nor the old credentials until the next renewal. An
        endpoint built is put in the pool and the balancer, and waiting calls woken; a
        failure again is not logged or counted again. Ends when nothing is left to
        build, or with :meth:`close`."""
        delay = _BUILD_RETRY_FIRST_S
        while (self._unbuilt or self._stale) and not self.closed:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BUILD_RETRY_MAX_S)
            if self.closed:
                return
            added = False
            for inst, _error in list(self._unbuilt.values()):
                key = inst.instance_id
                if key not in self.endpoints and self._add(inst):
                    added = True
                    _log.info("sub-channel built; endpoint added", service=self.service,
                              instance_id=key, address=inst.address)
            if added:
                self.balancer.update([self.endpoints[k] for k in sorted(self.endpoints)])
                if not self._to_add:  # a first answer none of which could be built at
                    self._warm()  # first is all in now: later ones are newcomers
                self.notify()
            for key in list(self._stale):
                ep = self.endpoints.get(key)
                if ep is None:  # left meanwhile
                    self._stale.discard(key)
                elif self._rebuild_one(key, ep, retried=True):
                    _log.info("sub-channel rebuilt", service=self.service, instance_id=key,
                              address=ep.instance.address)

    def _forget(self) -> None:
        """Keep the counters of the last ``_RETIRED_MAX`` instances to leave, beside the
        present ones (however many), so the history stays bounded and an instance that
        left a while ago and comes back starts from 0 (its series gone meanwhile)."""
        history, present = self.history, self.endpoints
        excess = len(history) - len(present) - _RETIRED_MAX  # every present one is in it
        if excess > 0:
            # the first retired in the dict's order left longest ago (_retire re-inserts)
            for key in [k for k in history if k not in present][:excess]:
                del history[key]

    def _retire(self, ep: Endpoint) -> None:
        del self.endpoints[ep.key]
        self._by_state.discard(ep)
        if self._stale:
            self._stale.discard(ep.key)  # its new endpoint (if any) is built afresh
        if self._pending:
            self._drop_pending(ep.key, ep)
        self._idle.discard(ep.key)
        self._ended_at.pop(ep.key, None)
        # kept (its counters go on if it comes back), last in the order of forgetting
        self.history[ep.key] = self.history.pop(ep.key, ep)
        conn = self.conns.pop(ep.key)
        ep.state = EndpointState.FAILING
        task = self._state_tasks.pop(ep.key, None)
        if task is not None:
            task.cancel()
        # the draining refusals seen from it are kept while its calls in flight may end
        # (meshkit.resilience._retry.cut_before_it_ran), then forgotten
        task = self._drain(conn, ep, self._drain_s)
        task.add_done_callback(lambda _task: forget_endpoint(ep))
        task.add_done_callback(functools.partial(self._forget_left, ep.key, conn))
        self._left[ep.key] = (ep.instance.address, conn)
        # its sub-channels kept after a rebuild: the same grace, from now (their drain
        # tasks may not have started yet: close() only lowers what is set here)
        now = time.monotonic()
        for old in self._replaced.get(ep.key, ()):
            old.cut(self._drain_s, now)

    def _drain(self, conn: _Conn, ep: Endpoint, grace_s: float) -> asyncio.Task[None]:
        """Close a sub-channel nothing new is sent on, after ``grace_s`` seconds of grace
        (``math.inf``: once its calls have ended; cut short by :meth:`close`), counted
        from now: ``conn.drain_until`` is set here, before the task starts, so a cut made
        in the meantime (its endpoint leaving) is not undone when it does."""
        conn.cut(grace_s)
        task = asyncio.get_running_loop().create_task(
            conn.close(ep, grace_s, self._mark_cut))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
        return task

    def _mark_cut(self, calls: list[Any]) -> None:
        """``calls`` are about to be cancelled by a drain that ran out: remember them
        (:attr:`cut_calls`), unless the pool is closing (its close cut the drain short:
        the channel's close, ``CANCELLED``)."""
        if not self.closed and calls:
            self.cut_calls.update(calls)

    def rebuild(self) -> None:
        """Give every endpoint a new sub-channel (e.g. with a renewed client certificate),
        make-before-break: a READY endpoint's new sub-channel connects first, and new
        calls go to it once it is READY; until then they go over the established
        connection, so a renewal neither holds calls for a handshake nor, when the new
        connection cannot be made (a server refusing the renewed certificate, a
        partition; one warning), fails calls the established connection still carries.
        If that connection ends meanwhile, the endpoint goes over to its new sub-channel
        at once. An endpoint not READY (connecting, failing, left IDLE) takes its new
        sub-channel at once. The old sub-channel is kept until its own last call ends,
        however long (a watch, a subscription: renewing a certificate fails no call in
        flight, as grpc-go's credential reloading leaves established connections alone),
        unless its endpoint leaves the registry meanwhile (then ``drain_timeout_s``) or
        the pool is closed (then :meth:`close`'s grace). A renewal while the last one's
        sub-channel still connects replaces it. An endpoint whose new sub-channel cannot
        be built keeps its current one (logged and counted) and its rebuild is retried
        with a backoff (:meth:`_retry_builds`) until it is built.

        The new sub-channels are built :data:`BUILD_BATCH` at a time: the first batch
        in this call (a pool that small is rebuilt here, at once), the rest a batch per
        turn of the event loop, so a channel to thousands of endpoints does not hold the
        loop for all of them at once; the established connections carry the calls
        meanwhile. An endpoint that leaves (or is replaced) before its turn is not
        rebuilt; one discovered meanwhile gets a sub-channel of the new credentials
        anyway. A renewal while a rebuild is under way starts over with the endpoints
        then present."""
        if self._rebuilding is not None:
            self._rebuilding.cancel()  # a renewal again: start over
            self._rebuilding = None
        todo = list(self.endpoints.items())
        rebuilt, failed = self._rebuild_some(todo[:BUILD_BATCH])
        if len(todo) > BUILD_BATCH:
            self._rebuilding = self.spawn(
                self._rebuild_rest(todo[BUILD_BATCH:], rebuilt, failed))
        else:
            _log.info("sub-channels rebuilt", service=self.service, endpoints=rebuilt,
                      failed=failed)

    def _rebuild_some(self, todo: list[tuple[str, Endpoint]]) -> tuple[int, int]:
        """Rebuild the endpoints of ``todo`` still in the pool (:meth:`_rebuild_one`):
        how many were given a new sub-channel, and how many could not be."""
        rebuilt = failed = 0
        for key, ep in todo:
            if self.endpoints.get(key) is not ep:  # left, or replaced, meanwhile
                continue
            if self._rebuild_one(key, ep, retried=False):
                rebuilt += 1
            else:
                failed += 1
        if self._stale:
            self._retry_builds_later()
        return rebuilt, failed

    async def _rebuild_rest(self, todo: list[tuple[str, Endpoint]], rebuilt: int,
                            failed: int) -> None:
        """The rest of :meth:`rebuild`, :data:`BUILD_BATCH` endpoints per loop turn."""
        for start in range(0, len(todo), BUILD_BATCH):
            await asyncio.sleep(0)  # the loop's other work runs between two batches
            if self.closed or self.dropped:
                return
            done, failing = self._rebuild_some(todo[start:start + BUILD_BATCH])
            rebuilt += done
            failed += failing
        self._rebuilding = None
        _log.info("sub-channels rebuilt", service=self.service, endpoints=rebuilt,
                  failed=failed)

    def _rebuild_one(self, key: str, ep: Endpoint, *, retried: bool) -> bool:
        """Give endpoint ``key`` a new sub-channel (``True``), the old one drained once its
        own calls end; when it cannot be built (``False``) the current one is kept and
        the endpoint is left to :meth:`_retry_builds`, the failure logged and counted
        unless ``retried`` (a retry's failure again)."""
        try:
            conn = _Conn(self._make_channel(ep.instance.address))
        except Exception as exc:  # the current sub-channel still serves: kept
            if self.dropped:  # the channel is gone (no factory): its close is coming
                return False
            if not retried:
                self.sub_channel_errors += 1
                _log.error("sub-channel could not be rebuilt; keeping the current one",
                           service=self.service, instance_id=key,
                           address=ep.instance.address, error=f"{type(exc).__name__}: {exc}")
            self._stale.add(key)
            return False
        self._stale.discard(key)
        self._drop_pending(key, ep)
        if ep.state is EndpointState.READY and key not in self._idle:
            self._pending[key] = (conn, self.spawn(self._connect_then_use(key, conn)))
        else:  # nothing established to keep calls on
            self._use(key, ep, conn)
        return True

    async def _connect_then_use(self, key: str, conn: _Conn) -> None:
        """Connect ``conn``, the new sub-channel :meth:`rebuild` made for endpoint
        ``key``, and put it in use (:meth:`_promote`) once READY; its first failure to
        connect is logged (a warning: calls stay on the established connection; with
        ``reason``, what the :attr:`diagnosis` probe found, on an mTLS channel), not
        each reconnection grpc makes with its backoff."""
        ch = conn.channel
        state = ch.get_state(try_to_connect=True)
        warned = False
        while state is not _READY_CONN:
            if state is _SHUTDOWN:
                return
            if state is _FAILURE_CONN and not warned:
                warned = True
                ep = self.endpoints.get(key)
                address = ep.instance.address if ep is not None else None
                # why (mTLS: its TLS probe, with the renewed files; a server refusing
                # the renewed certificate), before the warning: its task only waits
                reason = (await self.diagnosis.explain(address)
                          if self.diagnosis is not None and address is not None else None)
                _log.warning("renewed sub-channel could not connect; calls stay on the "
                             "established connection", service=self.service,
                             instance_id=key, address=address,
                             **({"reason": reason} if reason is not None else {}))
            await ch.wait_for_state_change(state)
            state = ch.get_state()
            if state is _IDLE_CONN or state is _FAILURE_CONN:
                state = ch.get_state(try_to_connect=True)
        if warned:
            _log.info("renewed sub-channel connected", service=self.service,
                      instance_id=key)
        self._promote(key)

    def _promote(self, key: str) -> None:
        """Put endpoint ``key``'s pending sub-channel (:meth:`rebuild`) in use: it
        connected, or the established connection ended. Nothing pending: a no-op."""
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        conn, task = entry
        if task is not asyncio.current_task():
            task.cancel()
        ep = self.endpoints.get(key)
        if ep is not None:  # (_retire and close() drop what is pending: always here)
            self._use(key, ep, conn)
            self.notify()

    def _drop_pending(self, key: str, ep: Endpoint) -> None:
        """Close endpoint ``key``'s pending sub-channel, if any (a newer renewal, its
        endpoint left): it carried no call."""
        entry = self._pending.pop(key, None)
        if entry is not None:
            conn, task = entry
            task.cancel()
            self._drain(conn, ep, 0.0)

    def _use(self, key: str, ep: Endpoint, conn: _Conn) -> None:
        """Make ``conn`` endpoint ``key``'s sub-channel; the one it replaces drains
        until its own calls end (:meth:`rebuild`)."""
        old = self.conns[key]
        self.conns[key] = conn
        task = self._state_tasks.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        # an endpoint left IDLE (its server closed the unused connection) stays IDLE on
        # its new sub-channel until a call asks (connect_idle): a renewal is no activity
        self._state_tasks[key] = self.spawn(
            self._track_state(ep, connect=key not in self._idle))
        self._replaced.setdefault(key, set()).add(old)
        connection_ended(ep)  # new attempts go over a new connection
        self._ended_at[key] = time.perf_counter()
        self._drain(old, ep, math.inf).add_done_callback(
            functools.partial(self._forget_replaced, key, old))

    def _forget_left(self, key: str, conn: _Conn, task: asyncio.Task[None]) -> None:
        """The sub-channel of an endpoint that left is closed (its drain ``task`` done),
        whether or not it was kept (:meth:`_came_back`). The departure is forgotten only
        once no sub-channel kept for the endpoint is left either: one made at its last
        return carried no call and is closed at once, while the ones before it still
        carry a stream, which the instance coming back must keep (a second flap)."""
        self._forget_replaced(key, conn, task)
        left = self._left.get(key)
        if left is not None and left[1] is conn and key not in self._replaced:
            del self._left[key]

    def _forget_replaced(self, key: str, conn: _Conn, _task: asyncio.Task[None]) -> None:
        """A sub-channel replaced by :meth:`rebuild` (or kept by :meth:`_came_back`) is
        closed (its drain ``_task`` done); the last one of an endpoint away takes the
        record of its departure with it when that sub-channel is closed too."""
        replaced = self._replaced.get(key)
        if replaced is not None:
            replaced.discard(conn)
            if not replaced:
                del self._replaced[key]
                left = self._left.get(key)
                if left is not None and left[1].closing:
                    del self._left[key]

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the pool cancels on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn_in_own_loop(self, coro: Any) -> None:
        """:meth:`spawn` ``coro`` when called in the pool's own event loop; anywhere else
        close it unrun. A stream's done callback reports its outcome so; grpc.aio runs it
        where the call ends, which is outside that loop for a stream still open when the
        loop ended (the pool closed with it) and collected afterwards: grpc.aio's
        ``Call.__del__`` cancels it there and then, with no running loop ("Exception
        ignored in Call.__del__ ... no running event loop" and "coroutine was never
        awaited" on stderr) or in a later loop (the report started as a task of that
        loop, for a pool closed with the old one). Nobody is left to report to."""
        loop = asyncio._get_running_loop()
        if loop is not self._loop:
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _track_state(self, ep: Endpoint, *, connect: bool = True) -> None:
        """Mirror the endpoint's sub-channel connectivity in ``ep.state``, waking waiting
        calls on every change of it (not on one of the sub-channel's that leaves it as it
        is: IDLE to CONNECTING).

        The sub-channel connects when it is built and again at once after a failed
        attempt or when a connection that carried calls drops (a server that died,
        restarted or ended it by ``max_connection_age``), so a dead endpoint shows as
        failing before a call is sent to it rather than after, and one that comes back
        is in rotation again without waiting for a call (gRPC's ``round_robin``
        reconnects a subchannel that goes IDLE). A connection that carried no call of
        this pool and was closed (a server's ``max_connection_idle_s`` GOAWAY, grpc's
        own client idle timeout) leaves the sub-channel IDLE until a call needs it
        (:meth:`connect_idle`), as gRPC's connectivity semantics prescribe ("channels
        that receive a GOAWAY when there are no active or pending RPCs should also switch
        to IDLE to avoid connection overload at servers that are attempting to shed
        connections"): reconnecting at once made an idle client reopen every connection
        a server closed as idle, for ever. With ``connect`` false (the sub-channel
        :meth:`rebuild` made for an endpoint left IDLE) it is not asked to connect at
        first either: it stays IDLE until a call asks. Each change is told to the
        :attr:`diagnosis`, and a ``TRANSIENT_FAILURE`` that lasts again every probe
        interval (:meth:`_state_change`)."""
        key = ep.key
        conn = self.conns.get(key)
        if conn is None:
            # spawned in the turn its sub-channel went (a close() that ran before this
            # task started: a batch added or rebuilt just before; raising here left a
            # "Task exception was never retrieved" per endpoint): nothing to mirror
            return
        ch = conn.channel
        state = ch.get_state(try_to_connect=connect)
        calls = ep.calls  # the endpoint's calls before the connection being made
        while True:
            # waiting calls (and the channel's state) are woken by a change of the
            # endpoint's state only: idle to connecting is none (both IDLE), and woke
            # every waiting call to pick again, once per endpoint, at a channel's start
            mapped = _CONNECTIVITY.get(state, EndpointState.IDLE)
            if ep.state is not mapped:
                ep.state = mapped
                self.notify()
            if state is _SHUTDOWN:
                return
            last = state
            await self._state_change(ch, ep, state)
            state = ch.get_state()
            self._observe(ep, state)  # (a change of connectivity: not per call)
            if last is _READY_CONN and state is not _READY_CONN and key in self._pending:
                # the established connection ended while a renewal's sub-channel
                # connects: the endpoint follows the new one (this task ends here)
                ep.state = _CONNECTIVITY.get(state, EndpointState.IDLE)
                self._promote(key)
                return
            if last is _READY_CONN:  # (READY again: a new connection made meanwhile)
                connection_ended(ep)  # a draining refusal seen before proves no more
                self._ended_at[key] = time.perf_counter()  # (see leaving)
            if last is _READY_CONN and state is not _READY_CONN:  # the connection ended
                used, calls = ep.calls != calls or ep.in_flight > 0, ep.calls
                if state is _IDLE_CONN and not used:
                    self._idle.add(key)  # until a call asks (connect_idle)
                    continue
            if state is _IDLE_CONN or state is _FAILURE_CONN:
                state = ch.get_state(try_to_connect=True)

    async def _state_change(self, ch: grpc.aio.Channel, ep: Endpoint,
                            state: grpc.ChannelConnectivity) -> None:
        """Wait until sub-channel ``ch`` of endpoint ``ep`` leaves ``state``. A
        ``TRANSIENT_FAILURE`` of an mTLS channel's sub-channel (a :attr:`diagnosis`) that
        lasts is told to the diagnosis again after its probe interval (30 s), then after
        twice as long each time, up to 8 intervals (4 min): grpc keeps a sub-channel that
        cannot connect in it while it reconnects, reporting no change, and a fleet of dead
        endpoints is so probed a few times, then every 4 min. The one watch of the state
        is kept meanwhile (a cancelled grpc watch stays registered in grpc core until the
        next change of state, about 0.8 KB each)."""
        if state is not _FAILURE_CONN or self.diagnosis is None:
            await ch.wait_for_state_change(state)
            return
        watch = asyncio.ensure_future(ch.wait_for_state_change(state))
        try:
            for lasting in itertools.count():
                wait_s = self.diagnosis.interval_s * 2 ** min(lasting, 3)
                done, _ = await asyncio.wait((watch,), timeout=wait_s)
                if done:
                    watch.result()  # (its error, if any, raised)
                    return
                self._observe(ep, state)  # still failing: its probe asked again
        finally:
            watch.cancel()  # (done: nothing; the pool closed: its one watch)

    def _observe(self, ep: Endpoint, state: grpc.ChannelConnectivity) -> None:
        """Tell the :attr:`diagnosis` (if any) of endpoint ``ep``'s sub-channel ``state``,
        running the probe it returns as a pool task."""
        if self.diagnosis is not None:
            probe = self.diagnosis.observe(ep.key, ep.instance.address, state)
            if probe is not None:
                self.spawn(probe)

    @property
    def left_idle(self) -> set[str]:
        """The keys of the endpoints left IDLE (:meth:`_track_state`), one set for the
        pool's life: a caller may keep it and test it for emptiness per call."""
        return self._idle

    def connect_idle(self) -> None:
        """Ask every endpoint whose sub-channel was left IDLE (its connection closed
        while unused: :meth:`_track_state`) to connect. Called when a call finds no
        READY endpoint (:meth:`_connected`), as gRPC's channel leaving IDLE on new RPC
        activity connects every subchannel of its ``round_robin``: the balancers send
        calls to READY endpoints while one is, so an endpoint left IDLE beside one that
        connected would get no call again; and by the channel when a call is sent to a
        READY endpoint while others were left IDLE (any call is activity: the endpoints
        left IDLE come back into rotation). Nothing to do (no endpoint left IDLE): a
        no-op."""
        if not self._idle:
            return
        idle = list(self._idle)
        self._idle.clear()  # in place: the channel holds this set (left_idle)
        conns = self.conns
        for key in idle:
            conn = conns.get(key)  # (an endpoint that left or was rebuilt meanwhile: skipped
            if conn is not None:  # or asked again, harmlessly)
                conn.channel.get_state(try_to_connect=True)
        # the channel's state moves from IDLE to CONNECTING (MeshChannel.get_state), which
        # no endpoint's state change announces (both IDLE): its watchers are woken here
        self.notify()

    def observed(self, ep: Endpoint, state: EndpointState) -> None:
        """Set ``ep``'s state to ``state`` now, ahead of :meth:`_track_state`: the
        connectivity its sub-channel showed on a call's failure path (grpc failed an
        attempt because the sub-channel could not connect; the channel reads the
        sub-channel's state then). :meth:`_track_state` hears of a sub-channel's changes
        through ``wait_for_state_change``, a moment after grpc itself: until then the
        endpoint read ``READY`` and further calls were picked onto it. The sub-channel
        having left ``READY``, :meth:`_track_state` then sets the state it finds, as
        always. An endpoint no longer in the pool (it left, or the pool closed) is left
        alone; waiting calls are woken when the state changes."""
        if ep.state is not state and self.endpoints.get(ep.key) is ep:
            ep.state = state
            self.notify()

    def leaving(self, ep: Endpoint, started: float | None = None) -> None:
        """A draining server refused a call on ``ep`` (``UNAVAILABLE`` "server draining"
        with ``meshkit-nack: 1``, :func:`~meshkit.resilience._retry.draining_refusal`):
        its server is leaving for good, as a GOAWAY says, so the endpoint is taken out of
        picking at once (``FAILING``: no balancer, outlier ejection's panic routing
        included, sends a call there) for its current connection. Nothing else would:
        its sub-channel stays ``READY`` through the server's refusal phase, P2C's failure
        penalty (``overload_penalty_s``, 0.25 s) is less than a loaded endpoint's cost,
        and outlier ejection's cap (``max_ejection_percent``) may forbid ejecting it, so
        calls went on to the draining server until its stop cancelled those grpc had
        accepted but not yet run (``CANCELLED``, never retried).

        It comes back as :meth:`_track_state` reads its sub-channel: that state is set
        on the sub-channel's next change only, which the refusal phase does not make (the
        old connection stays ``READY``); the server's stop ends the connection, and a new
        ``READY`` (a server restarted at the address, a rebuilt sub-channel) puts the
        endpoint back in rotation, as does a new :class:`Endpoint` for a later discovery
        answer that lists the instance again after it left. A connection that goes on
        (no change for :data:`LEAVING_HOLD_S`, 10 s: an L7 proxy passing one drained
        backend's refusal through, a server of another make refusing so and serving on)
        puts it back then, where it was kept out for as long as the connection lived.

        ``started``: the attempt's ``time.perf_counter()`` start (or a later reading),
        ``None`` when not known. Ignored (nothing changes) when ``ep`` is not ``READY``
        (the pool already saw its connection change), has left the pool, or its
        connection ended or was replaced at or after ``started`` (the refusal came over
        the one before). Residual risk without ``started``: a refusal read after the
        endpoint reconnected to a new server at its address keeps it out until that
        connection changes (a reconnect within the loop turns between the refusal's
        arrival and its reading). The failure path only; raises nothing."""
        if ep.state is not EndpointState.READY or self.endpoints.get(ep.key) is not ep:
            return
        if started is not None and self._ended_at.get(ep.key, -math.inf) >= started:
            return
        ep.state = EndpointState.FAILING
        self.notify()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop: nothing to bound it with)
            return
        # (weakly: the timer does not keep a dropped channel's pool alive for the hold)
        loop.call_later(LEAVING_HOLD_S, _left_long_enough, weakref.ref(self), ep,
                        time.perf_counter())

    def _left_long_enough(self, ep: Endpoint, left_at: float) -> None:
        """:data:`LEAVING_HOLD_S` after :meth:`leaving` took ``ep`` out: back in picking
        (``READY``) when its connection neither ended nor was replaced since (no change
        the state tracker saw, :attr:`_ended_at`), it is still the pool's and still
        ``FAILING``, and the pool is open; else nothing (its tracker or a later discovery
        answer decides)."""
        if (self.closed or self.endpoints.get(ep.key) is not ep
                or ep.state is not EndpointState.FAILING
                or self._ended_at.get(ep.key, -math.inf) >= left_at):
            return
        ep.state = EndpointState.READY
        self.notify()

    @property
    def by_state(self) -> StateIndex:
        """The pool's endpoints by state (kept by their state's setter): read, never
        changed."""
        return self._by_state

    @property
    def ready_count(self) -> int:
        """How many of the pool's endpoints are READY, O(1) (a count kept by their
        state's setter, :class:`~meshkit.balancer._endpoint.StateIndex`)."""
        return self._by_state.count(EndpointState.READY)

    @staticmethod
    def state_of(connectivity: grpc.ChannelConnectivity) -> EndpointState:
        """The :class:`EndpointState` of a sub-channel in ``connectivity``."""
        return _CONNECTIVITY.get(connectivity, EndpointState.IDLE)

    def notify(self) -> None:
        """Wake everything waiting in :meth:`changed`."""
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def changed(self) -> None:
        """Wait for the next change of endpoints or their connectivity."""
        await self._changed.wait()

    # -- picking -----------------------------------------------------------------------
    async def pick_slow(self, details: ClientCallDetails,
                        picked: tuple[Endpoint, Done] | None = None) -> tuple[Endpoint, Done]:
        """Pick when the fast path could not: wait for the first discovery answer (for
        ``resolve_timeout_s`` within the call's deadline, cut short by a registry that
        reports it cannot be read, a resolver error; with ``wait_for_ready`` until
        the deadline, however long without one), and with ``wait_for_ready`` for a usable
        endpoint, within the call's deadline.

        A pick of an endpoint still connecting or IDLE (``picked``, or one made here; an
        IDLE one is asked to connect, as a call on an IDLE gRPC channel connects it) is
        not sent on: the call waits, as gRPC's ``round_robin`` picker queues a call while no
        subchannel is READY, until that endpoint or another one is READY (then the
        balancer picks again), and fails as :class:`NoEndpointsError` when every endpoint
        is failing without ``wait_for_ready``. A call committed to a connecting endpoint
        would fail with grpc's own "failed to connect" for an endpoint that refuses while
        another is healthy, or wait out its deadline on it with ``wait_for_ready``.

        Raises:
            MeshRpcError: ``CANCELLED`` (the pool is closed, or closed while the call
                waited), ``DEADLINE_EXCEEDED`` (the call's deadline ended the wait for an
                endpoint, or for the first discovery answer while the registry reports
                no fault or, with ``wait_for_ready``, whatever it reports).
            NoEndpointsError: ``UNAVAILABLE``, naming the service and why.
        """
        if picked is not None:
            picked = await self._connected(details, picked)
            if picked is not None:
                return picked
        if self.closed:
            raise MeshRpcError(grpc.StatusCode.CANCELLED,
                               f"channel to {self.service!r} is closed")
        if not self.resolved.is_set() and details.wait_for_ready:
            # wait-for-ready (gRPC's wait-for-ready.md): wait through a registry that has
            # not answered yet (or reports a fault) until the call's deadline, however
            # long without one; close() wakes it (CANCELLED below)
            try:
                async with asyncio.timeout(details.time_remaining_s()):  # (not wait_for)
                    await self.resolved.wait()
            except TimeoutError:
                problem = self._registry_problem()
                raise MeshRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline exceeded waiting for discovery of {self.service!r}"
                    + (f" ({problem})" if problem else ""),
                ) from None
        elif not self.resolved.is_set():
            wait = self._resolve_s
            remaining = details.time_remaining_s()
            by_deadline = remaining is not None and remaining < wait
            if remaining is not None:
                wait = max(0.0, min(wait, remaining))
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that
                # arrives in the turn its wait ends (call.cancel() cancels this task)
                async with asyncio.timeout(wait):
                    unreadable = await self._resolved_or_unreadable()
                if unreadable:
                    # a resolver error (gRPC's wait-for-ready.md): a call without
                    # wait_for_ready fails UNAVAILABLE at once, as gRPC's in a channel
                    # whose resolver failed, not resolve_timeout_s later
                    raise NoEndpointsError(self.service, unreadable, unresolved=True)
            except TimeoutError:
                problem = self._registry_problem()
                if by_deadline and problem is None:
                    # the call's deadline ended a wait for an answer still to come (as
                    # gRPC's calls queued on name resolution); a registry that reports a
                    # fault fails the call UNAVAILABLE naming it (a resolver error)
                    raise MeshRpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"deadline exceeded waiting for discovery of {self.service!r}",
                    ) from None
                why = f"no discovery answer within {wait:.3g}s"
                raise NoEndpointsError(
                    self.service, f"{problem}; {why}" if problem else why,
                    unresolved=True) from None
        while True:
            if self.closed:  # closed while this call waited
                raise MeshRpcError(grpc.StatusCode.CANCELLED,
                                   f"channel to {self.service!r} is closed")
            picked = self._pick(details)
            if picked is not None:
                if picked[0].state is EndpointState.READY:
                    return picked
                picked = await self._connected(details, picked)
                if picked is not None:
                    return picked
                continue  # every endpoint failing (with wait_for_ready): wait below
            if not details.wait_for_ready:
                if self.endpoints:
                    raise await self._all_failing_explained(details)
                raise NoEndpointsError(self.service, self._registry_problem()
                                       or self._unbuilt_problem() or self._filter_failure
                                       or self._filtered_problem()
                                       or "no endpoint is registered")
            remaining = details.time_remaining_s()
            # an ejection that ends makes an endpoint pickable (its probe) and wakes
            # nobody: look again then; one already due waits for its connection, whose
            # change wakes this wait
            probe_in = (self.balancer.next_probe_in_s()
                        if isinstance(self.balancer, EjectingBalancer) else None)
            wait_s = remaining if not probe_in else (
                probe_in if remaining is None else min(probe_in, remaining))
            try:
                async with asyncio.timeout(wait_s):  # (see above: not wait_for)
                    await self.changed()
            except TimeoutError:
                if wait_s == remaining:
                    filtered = self._filter_failure or self._filtered_problem()
                    raise MeshRpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"deadline exceeded waiting for an endpoint of {self.service!r}"
                        + (f" ({filtered})" if filtered else ""),
                    ) from None

    async def _connected(self, details: ClientCallDetails,
                         picked: tuple[Endpoint, Done]) -> tuple[Endpoint, Done] | None:
        """Wait, within the call's deadline, until the picked endpoint (still connecting,
        or IDLE: asked to connect here, with every other endpoint left IDLE,
        :meth:`connect_idle`) or another one is READY, picking again on every change of
        the pool (a pick of a connecting endpoint while another is READY, a ring hash's
        key owner, waits for that connection up to ``_CONNECTING_PICK_MAX_S``, as gRFC
        A42's picker queues it, and goes to another endpoint if it fails; then it is
        sent on); the READY pick, or ``None`` when the balancer finds no usable endpoint
        (every one failing) and the call has ``wait_for_ready`` (the caller waits on). An
        abandoned pick is settled as no outcome (``done(CANCELLED, 0.0)``, as a call
        never sent). A hedged call's attempt keeps the endpoint it waits on out of its
        sibling attempts' picks meanwhile (``HedgedAttempts.wait_on``), so that a sibling
        picked again when another endpoint connects does not take it.

        Raises:
            MeshRpcError: ``CANCELLED`` (the pool closed), ``DEADLINE_EXCEEDED`` (the
                deadline ended the wait).
            NoEndpointsError: ``UNAVAILABLE``, every endpoint failing, without
                ``wait_for_ready``.
        """
        ready = EndpointState.READY
        ep, done = picked
        held: tuple[Endpoint, Done] | None = picked
        # a hedged call's attempts run side by side: the endpoint this one waits on is
        # kept out of its siblings' picks until it is sent (or picks again), else a
        # sibling woken by another endpoint's connection took it (failure path only)
        hedged = details.attempts if type(details.attempts) is HedgedAttempts else None
        waiting_on: Endpoint | None = None
        if hedged is not None:
            hedged.wait_on(ep)
            waiting_on = ep
        # when the balancer first chose a connecting endpoint over READY ones (None: not)
        chosen_over_ready: float | None = None
        try:
            while ep.state is not ready:
                if self._idle:  # endpoints left IDLE: this call is activity, connect them
                    self.connect_idle()
                remaining = details.time_remaining_s()
                wait_s = remaining
                if self._by_state.count(ready):  # (O(1): a wake of each waiting call)
                    # the balancer chose a connecting endpoint over READY ones (a ring
                    # hash's key owner, a custom policy): its choice waits for that
                    # connection, and a pick again when it fails goes on to another
                    # endpoint (gRFC A42's picker queues a pick while the key's owner
                    # is CONNECTING and passes over one in TRANSIENT_FAILURE); sent on
                    # at once, grpc failed it UNAVAILABLE "failed to connect" beside a
                    # healthy endpoint. For _CONNECTING_PICK_MAX_S at most (a change
                    # that does not come): then sent on, its sub-channel queues it.
                    now = time.monotonic()
                    if chosen_over_ready is None:
                        chosen_over_ready = now
                    cap = chosen_over_ready + _CONNECTING_PICK_MAX_S - now
                    if cap <= 0:
                        break
                    if remaining is None or cap < remaining:
                        wait_s = cap
                if self.closed:
                    raise MeshRpcError(grpc.StatusCode.CANCELLED,
                                       f"channel to {self.service!r} is closed")
                try:
                    async with asyncio.timeout(wait_s):  # (see pick_slow: not wait_for)
                        await self.changed()
                except TimeoutError:
                    if wait_s is not remaining:  # the cap above: sent on as chosen
                        break
                    raise MeshRpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"deadline exceeded waiting for a connection to {self.service!r}",
                    ) from None
                if self.closed:  # (held: settled by the except clause below)
                    raise MeshRpcError(grpc.StatusCode.CANCELLED,
                                       f"channel to {self.service!r} is closed")
                if ep.state is ready:
                    break
                done(grpc.StatusCode.CANCELLED, 0.0)  # no outcome: picked again below
                held = None
                if waiting_on is not None:  # (hedged: its own endpoint is not excluded)
                    hedged.stop_waiting(waiting_on)  # type: ignore[union-attr]
                    waiting_on = None
                held = self._pick(details)
                if held is None:
                    if details.wait_for_ready:
                        return None
                    raise await self._all_failing_explained(details)
                ep, done = held
                if hedged is not None:
                    hedged.wait_on(ep)
                    waiting_on = ep
        except BaseException:
            if held is not None:
                done(grpc.StatusCode.CANCELLED, 0.0)
            raise
        finally:
            if waiting_on is not None:  # sent on now (launched in this step), or ended
                hedged.stop_waiting(waiting_on)  # type: ignore[union-attr]
        return ep, done

    async def _resolved_or_unreadable(self) -> str | None:
        """Wait for the first discovery answer (``None``) or, whichever comes first, for
        the registry to report that it cannot read this pool's service
        (``status(service).readable`` False, :meth:`_own_status`): then its fixed phrase
        (``RegistryStatus.summary``). The registry's status
        is looked at every ``UNREADABLE_POLL_S`` meanwhile (no I/O: it reports what its
        own reads saw); a registry without ``status()`` is only waited for."""
        status = getattr(self.registry, "status", None)
        while not self.resolved.is_set():
            if status is not None:
                try:
                    st = self._own_status(status)
                    unreadable, summary = st.readable is False, st.summary
                except Exception:  # a registry without status support: wait only
                    status = None
                    continue
                if unreadable and not self.closed:
                    return (summary if isinstance(summary, str)
                            else "the service registry cannot be read")
            try:
                async with asyncio.timeout(None if status is None else UNREADABLE_POLL_S):
                    await self.resolved.wait()
            except TimeoutError:
                pass
        return None

    def _pick(self, details: ClientCallDetails) -> tuple[Endpoint, Done] | None:
        """The balancer's pick for ``details``' call: ``pick_stream`` for a streaming
        call, of responses or of requests (where the balancer has one; the channel's
        fast path picks the same way), else ``pick``."""
        pick = (self.balancer.pick if details.kind is CallKind.UNARY_UNARY
                else self._pick_stream)
        return pick(details.request_key, details.attempts)

    async def _all_failing_explained(self, details: ClientCallDetails) -> NoEndpointsError:
        """:meth:`_all_failing`, once the channel's handshake probes under way have
        answered when none has said why yet: the probe of an endpoint runs when it goes
        ``TRANSIENT_FAILURE``, which is what fails the first call (its error had no
        reason, the next call's had). Waits :data:`_REASON_WAIT_S` at most, and at most
        half the time left before the call's deadline (so that the call still ends
        ``UNAVAILABLE`` in time); a channel without mTLS, or with no probe running, or
        with a reason known, does not wait. Successful calls never come here."""
        diagnosis = self.diagnosis
        if diagnosis is not None and diagnosis.busy and self.connect_problem() is None:
            remaining = details.time_remaining_s()
            wait_s = _REASON_WAIT_S if remaining is None else min(_REASON_WAIT_S,
                                                                   remaining / 2)
            if wait_s > 0:
                await diagnosis.settle(wait_s)
        return self._all_failing()

    def _all_failing(self) -> NoEndpointsError:
        """The error of a call no endpoint of the pool can take (``UNAVAILABLE``), with
        why the first endpoint (by instance id) whose :attr:`diagnosis` knows a reason
        cannot be connected: ``... are failing (w1 at host:port: <reason>)``."""
        why = "failing or ejected" if isinstance(self.balancer, EjectingBalancer) else "failing"
        text = f"all {len(self.endpoints)} endpoints are {why}"
        if (problem := self.connect_problem()) is not None:
            text += f" ({problem})"
        return NoEndpointsError(self.service, text)

    def connect_problem(self) -> str | None:
        """``"<instance id> at <host:port>: <reason>"`` for the first endpoint (by
        instance id) whose :attr:`diagnosis` knows why it cannot be connected, or
        ``None`` (no such endpoint, or no diagnosis: a channel without mTLS)."""
        if self.diagnosis is None:
            return None
        for key in sorted(self.endpoints):
            if (reason := self.diagnosis.reason(key)) is not None:
                return f"{key} at {self.endpoints[key].instance.address}: {reason}"
        return None

    def _unbuilt_problem(self) -> str | None:
        """Why registered endpoints are not in the pool (their sub-channels could not be
        built: the last error), or ``None`` when none is kept out."""
        if not self._unbuilt:
            return None
        error = next(reversed(self._unbuilt.values()))[1]
        return (f"the sub-channel of {len(self._unbuilt)} registered endpoint(s) could not "
                f"be built ({error})")

    def _filtered_problem(self) -> str | None:
        """Why the pool is empty although the registry lists instances: the filters
        (``DialOptions.filters``, each named by its ``repr``, at most 200 characters)
        left none of them; ``None`` otherwise."""
        if (not self._discovered or not self._filters or self.endpoints or self._unbuilt
                or self._to_add):
            return None
        names = ", ".join(short_repr(f) for f in self._filters)
        return (f"{self._discovered} registered instance(s), none kept by the filters"
                f" ({names})")

    def registry_unreadable(self) -> bool:
        """The registry reports that it cannot read this pool's service
        (``status(service).readable`` False, :meth:`_own_status`); ``False`` when it
        reports no status or its ``status()`` fails."""
        status = getattr(self.registry, "status", None)
        if status is None:
            return False
        try:
            return self._own_status(status).readable is False
        except Exception:  # a registry without status support
            return False

    def _own_status(self, status: Callable[..., Any]) -> Any:
        """The registry's ``status(service)`` for this pool's service (how its own
        watch reads: a registry's ``status()`` is unreadable only while every watched
        service fails, so one prefix refused among readable ones said nothing), or its
        ``status()`` for a registry whose ``status`` takes no service (a ``TypeError``:
        asked so from then on). Errors of ``status`` itself are the caller's."""
        if self._status_takes_service:
            try:
                return status(self.service)
            except TypeError:
                self._status_takes_service = False
        return status()

    def _registry_problem(self) -> str | None:
        """The registry's own fixed phrase for a fault of this pool's service
        (``RegistryStatus.summary`` of :meth:`_own_status`: no path, address or error
        text), or ``None`` when it reports none or cannot say."""
        status = getattr(self.registry, "status", None)
        if status is None:
            return None
        try:
            summary = self._own_status(status).summary
        except Exception:  # a registry without status support: say nothing more
            return None
        return summary if isinstance(summary, str) else None

    def _take_pending(self) -> list[tuple[_Conn, Endpoint]]:
        """The sub-channels a renewal made that still connect (:meth:`rebuild`), with
        their endpoints, for the pool's close; their tasks cancelled, none pending."""
        taken = []
        for key, (conn, task) in self._pending.items():
            task.cancel()
            ep = self.endpoints.get(key)
            if ep is not None:
                taken.append((conn, ep))
        self._pending.clear()
        return taken

    def _stop_background(self, *, trackers: bool = True) -> list[asyncio.Task[None]]:
        """Cancel the retry timer and the state trackers and forget the builds pending
        (:meth:`close`, and a watch ended with its event loop); with ``trackers`` false
        the state trackers are left running and returned (:meth:`close` lets them see
        their sub-channel's ``SHUTDOWN``)."""
        if self._retry_task is not None:
            self._retry_task.cancel()
        self._to_add.clear()
        self._unbuilt.clear()
        self._stale.clear()
        self._idle.clear()
        running = list(self._state_tasks.values())
        self._state_tasks.clear()
        if trackers:
            for task in running:
                task.cancel()
        return running

    async def close(self, grace: float | None = None) -> None:
        """Stop discovery and close every sub-channel, letting calls finish for ``grace``
        seconds (``None``: none), then cancelling them (``CANCELLED``); sub-channels still
        draining (endpoints that left) get the same grace at most. Calls waiting for an
        endpoint or for discovery fail ``CANCELLED`` at once. Each endpoint's state
        tracker ends at its sub-channel's ``SHUTDOWN`` (waited for at most
        :data:`_TRACKERS_END_S`), so no connectivity watch of grpc's is left to complete
        after the loop has closed."""
        if self.closed:
            abandoned, self._abandoned = self._abandoned, []
            if abandoned and asyncio.get_running_loop() is self._loop:
                await asyncio.gather(*(c.close(ep, None) for c, ep in abandoned),
                                     return_exceptions=True)
            return
        self.closed = True
        self.picking = False
        self.resolved.set()  # wake the calls waiting for discovery: they fail CANCELLED
        self.notify()
        # everything up to the first await is synchronous, and the awaits below end in
        # a finally: a close cancelled half-way (the loop-ending sweep of asyncio.run()
        # cancels a MeshChannel's shielded close task) still closes every sub-channel,
        # where it left them open and a later close() returned at once
        self._watch_task.cancel()  # now: the task below may be cancelled before it runs
        watch = asyncio.ensure_future(cancel_and_wait(self._watch_task))
        # (the retry timer: one of the pool's tasks, awaited below.) The state trackers
        # run on until their sub-channel is closed: a tracker cancelled while it awaits
        # wait_for_state_change leaves grpc's watch armed, which completes as the
        # sub-channel shuts down, after this close, often once this loop has closed,
        # and grpc then hands it to that closed loop from another loop of the process
        # ("Exception in callback PollerCompletionQueue._handle_events ... Event loop
        # is closed", logged there at ERROR, channels closed in worker threads' loops)
        trackers = self._stop_background(trackers=False)
        conns = self.conns  # every endpoint has one (_add); .get: close() never raises
        live = [(c, ep) for k, ep in self.endpoints.items() if (c := conns.get(k)) is not None]
        live += self._take_pending()
        for ep in self.endpoints.values():
            # as an endpoint that left (_retire): stats() would say READY until its
            # state tracker sees the sub-channel SHUTDOWN (FAILING too), if it does
            ep.state = EndpointState.FAILING
        self.endpoints.clear()
        self._by_state.track(())
        self.conns.clear()
        self.balancer.update([])
        draining = list(self._draining)

        async def cut_drains() -> None:  # retired sub-channels get this grace at most
            if draining:
                if grace:
                    await asyncio.wait(draining, timeout=grace)
                for task in draining:
                    task.cancel()
                await asyncio.gather(*draining, return_exceptions=True)

        closed = False
        try:
            await asyncio.gather(watch, *(c.close(ep, grace) for c, ep in live),
                                 cut_drains(), return_exceptions=True)
            closed = True
            if trackers:  # each ends at its sub-channel's SHUTDOWN: at once, normally
                await asyncio.wait(trackers, timeout=_TRACKERS_END_S)
        finally:
            for _conn, ep in live:
                forget_endpoint(ep)
            pending = list(self._tasks)  # (trackers still running included: cancelled)
            for task in pending:
                task.cancel()
            if not closed:  # cancelled: a sub-channel close may never have started
                await asyncio.gather(*(c.close(ep, None) for c, ep in live),
                                     return_exceptions=True)
            await asyncio.gather(*pending, return_exceptions=True)


def _left_long_enough(pool: weakref.ref[EndpointPool], ep: Endpoint, left_at: float) -> None:
    """:meth:`EndpointPool._left_long_enough` of ``pool`` if it still exists."""
    alive = pool()
    if alive is not None:
        alive._left_long_enough(ep, left_at)
