"""The balanced channel: :func:`dial` returns a :class:`MeshChannel` for generated stubs.

grpcio lets Python plug in neither a name resolver nor an LB policy (grpc/grpc#11685), so
meshkit balances itself. A :class:`MeshChannel` follows a registry watch for one service,
keeps one grpc.aio sub-channel per endpoint, and for every call:

1. runs the per-call :class:`~meshkit.interceptors.ClientInterceptor` chain
   (``DialOptions.interceptors``; retries, deadlines and tracing live here);
2. picks an endpoint through the :class:`~meshkit.discovery.Balancer` (round robin by
   default), skipping endpoints whose connection is failing;
3. makes the attempt on that endpoint's sub-channel, where the per-attempt
   ``grpc.aio`` interceptors (``DialOptions.attempt_interceptors``) run;
4. reports the outcome and latency to the balancer through ``done``.

Endpoints that leave the registry are removed from the balancer at once and their
sub-channel is closed with a grace period (``drain_timeout_s``), so in-flight calls finish.
With no usable endpoint a call fails with ``UNAVAILABLE`` naming the service.

Example::

    async with meshkit.dial("userd") as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        user = await users.GetUser(user_pb2.GetUserRequest(user_id="u1"), timeout=1.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc.aio import AioRpcError, Metadata

from meshkit._methods import MethodMatcher
from meshkit.auth import TLSOptions, tls_from_dir
from meshkit.discovery import (
    Balancer,
    Endpoint,
    EndpointState,
    Instance,
    Registry,
    registry_from_env,
)
from meshkit.errors import ConfigError, MeshRpcError, NoEndpointsError
from meshkit.interceptors import (
    CallKind,
    ClientCallDetails,
    ClientInterceptor,
    chain_stream,
    chain_unary,
)
from meshkit.observability import TelemetryOptions, attempt_interceptors, client_interceptors
from meshkit.resilience import (
    P2C,
    EjectingBalancer,
    OutlierOptions,
    RetryInterceptor,
    RetryOptions,
    current_deadline,
)

__all__ = ["DialOptions", "MeshChannel", "dial", "live_channels"]

_log = structlog.get_logger("meshkit.channel")
_perf = time.perf_counter
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN
_HISTORY_MAX = 256
_LIVE: weakref.WeakSet[MeshChannel] = weakref.WeakSet()


def live_channels() -> list[MeshChannel]:
    """Every :class:`MeshChannel` of this process not closed yet (for admin/debug pages)."""
    return sorted((c for c in _LIVE if not c._closed), key=lambda c: c.service)


@dataclass(frozen=True, slots=True, kw_only=True)
class DialOptions:
    """How :func:`dial` builds a :class:`MeshChannel`.

    Args:
        balancer: factory of the :class:`~meshkit.discovery.Balancer`, called once per
            channel (default :class:`~meshkit.resilience.P2C` over peak EWMA).
        outlier: outlier ejection (:class:`~meshkit.resilience.OutlierOptions`, on by
            default); ``None`` disables it.
        retry: retries and hedging (:class:`~meshkit.resilience.RetryOptions`; the default
            retries ``UNAVAILABLE`` only for calls safe to repeat, within a retry budget);
            ``None`` disables them.
        timeout_s: deadline of calls made without ``timeout``, seconds (default none).
        method_timeouts: ``{method pattern: timeout_s}`` overriding ``timeout_s``, e.g.
            ``{"OrderService/PlaceOrder": 2.0}``.
        propagate_deadline: inside a handler (see
            :class:`~meshkit.resilience.DeadlineInterceptor`) run outgoing calls under the
            incoming call's remaining time, never longer (default ``True``).
        deadline_margin_s: subtracted from a propagated deadline, seconds (default 0.0).
        hash_key_metadata: metadata key whose value is the request key for affinity
            balancers such as :class:`~meshkit.resilience.RingHash` (default none).
        subset_meta: use only instances whose registry meta has these values, e.g.
            ``{"version": "v2"}``; subset_tags: only instances with all these tags.
        prefer_zone: use only instances whose meta ``zone`` equals this, while any exists;
            otherwise all (default none).
        telemetry: client spans with W3C trace-context propagation, RED metrics and an access
            log per call (:class:`meshkit.observability.TelemetryOptions`, on by default,
            outermost); ``None`` turns them off.
        interceptors: per-call :class:`~meshkit.interceptors.ClientInterceptor` chain, first
            is outermost (default none); it runs inside telemetry, and retry inside it.
        attempt_interceptors: ``grpc.aio`` client interceptors installed on every
            endpoint's sub-channel; they run once per attempt (default none).
        tls: mTLS with workload identities (:class:`meshkit.auth.TLSOptions`): the client
            presents its certificate, checks the server's identity for the dialed service,
            and rebuilds its sub-channels when its certificate file is renewed (checked
            every ``tls.reload_interval_s``), without failing calls in flight.
        credentials: other ``grpc.ChannelCredentials`` (not with ``tls``).
        insecure: plaintext, asked for explicitly (default ``False``); without it, ``tls``
            or ``credentials``, :func:`dial` takes certificates from ``MESHKIT_CERT_DIR`` /
            ``MESHKIT_WORKLOAD`` or refuses.
        channel_options: extra grpc channel arguments, e.g.
            ``(("grpc.max_receive_message_length", 8 << 20),)``.
        resolve_timeout_s: how long a call waits for the first discovery answer before
            failing with ``UNAVAILABLE`` (default 5.0 s; bounded by the call's deadline).
        drain_timeout_s: grace given to in-flight calls on an endpoint that left the
            registry before its sub-channel is closed (default 10.0 s).

    Raises:
        ConfigError: a value is out of range (quoted in the message).
    """

    balancer: Callable[[], Balancer] = P2C
    outlier: OutlierOptions | None = field(default_factory=OutlierOptions)
    retry: RetryOptions | None = field(default_factory=RetryOptions)
    timeout_s: float | None = None
    method_timeouts: Mapping[str, float] = field(default_factory=dict)
    propagate_deadline: bool = True
    deadline_margin_s: float = 0.0
    hash_key_metadata: str | None = None
    subset_meta: Mapping[str, str] = field(default_factory=dict)
    subset_tags: tuple[str, ...] = ()
    prefer_zone: str | None = None
    telemetry: TelemetryOptions | None = field(default_factory=TelemetryOptions)
    interceptors: tuple[ClientInterceptor, ...] = ()
    attempt_interceptors: tuple[grpc.aio.ClientInterceptor, ...] = ()
    tls: TLSOptions | None = None
    credentials: grpc.ChannelCredentials | None = None
    insecure: bool = False
    channel_options: tuple[tuple[str, Any], ...] = ()
    resolve_timeout_s: float = 5.0
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.resolve_timeout_s > 0:
            raise ConfigError(f"resolve_timeout_s must be > 0, got {self.resolve_timeout_s!r}")
        if not self.drain_timeout_s >= 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s!r}")
        if self.tls is not None and self.credentials is not None:
            raise ConfigError("give tls or credentials, not both")
        if self.insecure and (self.tls is not None or self.credentials is not None):
            raise ConfigError("insecure=True contradicts tls/credentials")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        for pattern, t in self.method_timeouts.items():
            if not (isinstance(t, int | float) and t > 0):
                raise ConfigError(f"method_timeouts[{pattern!r}] must be > 0, got {t!r}")
        MethodMatcher(self.method_timeouts, None, where="method_timeouts")  # the patterns
        if not self.deadline_margin_s >= 0:
            raise ConfigError(f"deadline_margin_s must be >= 0, got {self.deadline_margin_s!r}")
        if self.hash_key_metadata is not None and self.hash_key_metadata != \
                self.hash_key_metadata.lower():
            raise ConfigError(
                f"hash_key_metadata must be lower case (gRPC metadata keys are), got "
                f"{self.hash_key_metadata!r}")
        object.__setattr__(self, "subset_tags", tuple(self.subset_tags))
        object.__setattr__(self, "interceptors", tuple(self.interceptors))
        object.__setattr__(self, "attempt_interceptors", tuple(self.attempt_interceptors))
        for icpt in self.interceptors:
            if not isinstance(icpt, ClientInterceptor):
                raise ConfigError(
                    f"interceptors must be meshkit ClientInterceptor instances, got {icpt!r}"
                )


def dial(
    service: str, *, registry: Registry | None = None, options: DialOptions | None = None
) -> MeshChannel:
    """Open a balanced channel to ``service``; pass it to any generated stub.

    Must be called with an event loop running (like ``grpc.aio`` channels). Discovery
    starts at once; calls made before the first answer wait for it (``resolve_timeout_s``).

    Args:
        service: mesh service name as registered, e.g. ``"orderd"``.
        registry: where to discover it; default :func:`meshkit.discovery.registry_from_env`
            (``MESHKIT_REGISTRY``, else the local registry), owned and closed by the channel.
        options: :class:`DialOptions` (defaults apply when omitted).

    Returns:
        A :class:`MeshChannel` (a ``grpc.aio.Channel``); close it with ``await ch.close()``
        or use ``async with``.

    Transport security is required: ``options.tls``, other ``credentials``, or the
    environment (``MESHKIT_CERT_DIR`` with this workload's name in ``MESHKIT_WORKLOAD``);
    plaintext only with ``DialOptions(insecure=True)``.

    Raises:
        ConfigError: ``service`` is not a valid service name, the registry URI is bad, or
            no transport security is configured and ``insecure`` was not asked for.
        RuntimeError: no event loop is running.
    """
    if not isinstance(service, str) or not _SERVICE_RE.match(service):
        raise ConfigError(f"service name must match {_SERVICE_RE.pattern}, got {service!r}")
    opts = _with_transport(options or DialOptions(), service)
    owns = registry is None
    reg = registry_from_env() if registry is None else registry
    return MeshChannel(service, reg, opts, owns_registry=owns)


def _with_transport(opts: DialOptions, service: str) -> DialOptions:
    """Secure by default: options without ``tls``/``credentials``/``insecure`` take the
    workload's certificates from ``MESHKIT_CERT_DIR`` (workload ``MESHKIT_WORKLOAD``), else
    fail: plaintext must be asked for."""
    if opts.tls is not None or opts.credentials is not None or opts.insecure:
        return opts
    cert_dir = os.environ.get("MESHKIT_CERT_DIR")
    workload = os.environ.get("MESHKIT_WORKLOAD")
    if cert_dir and workload:
        return dataclasses.replace(opts, tls=tls_from_dir(cert_dir, workload))
    raise ConfigError(
        f"dial({service!r}): no transport security configured: pass "
        "DialOptions(tls=TLSOptions(...)), or set MESHKIT_CERT_DIR and MESHKIT_WORKLOAD "
        "(this workload's name), or ask for plaintext with DialOptions(insecure=True)"
    )


class _Codec:
    """Per-method record shared by every call of one multicallable."""

    __slots__ = ("kind", "method", "request_serializer", "response_deserializer")

    def __init__(self, method: str, kind: CallKind, ser: Any, deser: Any) -> None:
        self.method = method
        self.kind = kind
        self.request_serializer = ser
        self.response_deserializer = deser

    def on(self, ep: Endpoint) -> Any:
        """The sub-channel multicallable of this method on ``ep`` (cached on the endpoint)."""
        callables = ep.callables
        mc = callables.get(self.method)
        if mc is None:
            factory = getattr(ep.channel, self.kind.value)
            mc = factory(self.method, request_serializer=self.request_serializer,
                         response_deserializer=self.response_deserializer,
                         _registered_method=True)
            callables[self.method] = mc
        return mc


class MeshChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over every endpoint of one service; build it with :func:`dial`.

    Calls accept the usual ``timeout`` (seconds), ``metadata``, ``wait_for_ready``,
    ``credentials`` and ``compression`` arguments. ``wait_for_ready=True`` also makes a
    call wait for an endpoint to appear instead of failing with ``UNAVAILABLE``.

    Status codes produced by the channel itself (all as :class:`meshkit.errors.MeshRpcError`):
    ``UNAVAILABLE`` when no endpoint is registered or all are failing to connect (message
    names the service), ``DEADLINE_EXCEEDED`` when the deadline passes before an attempt
    can start, ``CANCELLED`` when the channel is closed.
    """

    def __init__(
        self, service: str, registry: Registry, options: DialOptions, *, owns_registry: bool
    ) -> None:
        self.service = service
        self.registry = registry
        self.options = options
        self._owns_registry = owns_registry
        inner = options.balancer()
        self._balancer: Balancer = (
            EjectingBalancer(inner, options.outlier, on_change=self._on_ejection)
            if options.outlier is not None else inner
        )
        self.retry = RetryInterceptor(options.retry) if options.retry is not None else None
        self._timeouts: MethodMatcher[float | None] = MethodMatcher(
            options.method_timeouts, options.timeout_s, where="method_timeouts")
        self._endpoints: dict[str, Endpoint] = {}
        self._history: dict[str, Endpoint] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_tasks: dict[str, asyncio.Task[None]] = {}
        self._resolved = asyncio.Event()
        self._changed = asyncio.Event()
        self._closed = False
        self._reloader = options.tls.channel_reloader() if options.tls is not None else None
        self._tls_options = options.tls.channel_options(service) if options.tls else ()
        telemetry = options.telemetry
        self._attempt_interceptors = options.attempt_interceptors
        chain = (*options.interceptors, *((self.retry,) if self.retry is not None else ()))
        if telemetry is not None:
            chain = (*client_interceptors(telemetry), *chain)
            self._attempt_interceptors = (*attempt_interceptors(telemetry),
                                          *self._attempt_interceptors)
        self.watch_errors = 0
        self._unary = chain_unary(chain, self._attempt_unary)
        self._stream = chain_stream(chain, self._attempt_stream)
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"meshkit-watch-{service}"
        )
        if self._reloader is not None:
            self._spawn(self._watch_certificates())
        _LIVE.add(self)

    # -- discovery ----------------------------------------------------------------------
    async def _watch(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                async for instances in self.registry.watch(self.service):
                    self._apply(instances)
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

    def _on_ejection(self, key: str, ejected: bool) -> None:
        _log.warning("endpoint ejected" if ejected else "endpoint back in rotation",
                     service=self.service, instance_id=key)

    def _select(self, instances: frozenset[Instance]) -> list[Instance]:
        """Apply subsetting and zone preference to the discovered instances."""
        opts = self.options
        chosen = [
            i for i in instances
            if all(i.meta.get(k) == v for k, v in opts.subset_meta.items())
            and all(t in i.tags for t in opts.subset_tags)
        ]
        if opts.prefer_zone is not None:
            local = [i for i in chosen if i.meta.get("zone") == opts.prefer_zone]
            if local:
                chosen = local
        return chosen

    def _apply(self, instances: frozenset[Instance]) -> None:
        wanted = {i.instance_id: i for i in self._select(instances)}
        for key, ep in list(self._endpoints.items()):
            inst = wanted.get(key)
            if inst is None or inst.address != ep.instance.address:
                self._retire(ep)
            else:
                ep.instance = inst  # tags/meta/weight may change in place
        for key, inst in wanted.items():
            if key not in self._endpoints:
                self._add(inst)
        self._balancer.update([self._endpoints[k] for k in sorted(self._endpoints)])
        if not self._resolved.is_set():
            self._resolved.set()
        _log.debug("endpoints updated", service=self.service, endpoints=sorted(self._endpoints))
        self._notify()

    def _sub_channel(self, inst: Instance) -> grpc.aio.Channel:
        opts = self.options
        creds = self._reloader.credentials if self._reloader is not None else opts.credentials
        interceptors = self._attempt_interceptors or None
        if creds is None:
            return grpc.aio.insecure_channel(inst.address, options=opts.channel_options,
                                             interceptors=interceptors)
        return grpc.aio.secure_channel(inst.address, creds,
                                       options=(*opts.channel_options, *self._tls_options),
                                       interceptors=interceptors)

    async def _watch_certificates(self) -> None:
        assert self._reloader is not None and self.options.tls is not None
        while True:
            await asyncio.sleep(self.options.tls.reload_interval_s)
            try:
                renewed = self._reloader.check()
            except Exception as exc:  # a half-written file: keep the current credentials
                _log.warning("client certificate reload failed", service=self.service,
                             error=str(exc))
                continue
            if renewed:
                self.rebuild_sub_channels()

    def rebuild_sub_channels(self) -> None:
        """Give every endpoint a new sub-channel (e.g. with a renewed client certificate);
        calls in flight finish on the old one, closed with ``drain_timeout_s`` of grace."""
        for ep in list(self._endpoints.values()):
            old = ep.channel
            ep.channel = self._sub_channel(ep.instance)
            ep.callables = {}
            task = self._state_tasks.pop(ep.key, None)
            if task is not None:
                task.cancel()
            self._state_tasks[ep.key] = self._spawn(self._track_state(ep))
            self._spawn(old.close(grace=self.options.drain_timeout_s))
        _log.info("sub-channels rebuilt", service=self.service, endpoints=len(self._endpoints))

    def _add(self, inst: Instance) -> None:
        ch = self._sub_channel(inst)
        ep = Endpoint(inst, ch)
        self._endpoints[inst.instance_id] = ep
        self._history[inst.instance_id] = ep
        if len(self._history) > _HISTORY_MAX:
            for key in [k for k in self._history if k not in self._endpoints][:16]:
                del self._history[key]
        self._state_tasks[inst.instance_id] = self._spawn(self._track_state(ep))

    def _retire(self, ep: Endpoint) -> None:
        del self._endpoints[ep.key]
        ep.state = EndpointState.FAILING
        task = self._state_tasks.pop(ep.key, None)
        if task is not None:
            task.cancel()
        self._spawn(ep.channel.close(grace=self.options.drain_timeout_s))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _track_state(self, ep: Endpoint) -> None:
        ch = ep.channel
        state = ch.get_state(try_to_connect=True)
        while True:
            if state is grpc.ChannelConnectivity.READY:
                ep.state = EndpointState.READY
            elif state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                ep.state = EndpointState.FAILING
            elif state is grpc.ChannelConnectivity.SHUTDOWN:
                ep.state = EndpointState.FAILING
                return
            else:
                ep.state = EndpointState.IDLE
            self._notify()
            await ch.wait_for_state_change(state)
            # Reconnect at once when a connection drops, so a dead endpoint shows as failing
            # before a call is sent to it rather than after.
            state = ch.get_state(try_to_connect=True)

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    # -- picking and attempts -----------------------------------------------------------
    async def _pick_slow(self, details: ClientCallDetails) -> tuple[Endpoint, Any]:
        if self._closed:
            raise MeshRpcError(_CANCELLED, f"channel to {self.service!r} is closed")
        if not self._resolved.is_set():
            wait = self.options.resolve_timeout_s
            remaining = details.time_remaining_s()
            if remaining is not None:
                wait = max(0.0, min(wait, remaining))
            try:
                await asyncio.wait_for(self._resolved.wait(), wait)
            except TimeoutError:
                raise NoEndpointsError(
                    self.service, f"no discovery answer within {wait:.3g}s"
                ) from None
        while True:
            picked = self._balancer.pick(details.request_key, details.attempts)
            if picked is not None:
                return picked
            if not details.wait_for_ready:
                if self._endpoints:
                    raise NoEndpointsError(
                        self.service, f"all {len(self._endpoints)} endpoints are failing"
                    )
                raise NoEndpointsError(self.service)
            remaining = details.time_remaining_s()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise MeshRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline exceeded waiting for an endpoint of {self.service!r}",
                ) from None

    def _timeout(self, details: ClientCallDetails) -> float | None:
        if details.deadline is None:
            return None
        remaining = details.deadline - time.monotonic()
        if remaining <= 0:
            raise MeshRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return remaining

    def _launch(self, details: ClientCallDetails, picked: tuple[Endpoint, Any],
                request: Any) -> tuple[Endpoint, Any, Any]:
        """Start one attempt on the picked endpoint's sub-channel: ``(ep, done, call)``."""
        ep, done = picked
        details.attempts.append(ep)
        details.attempt_started_ns.append(time.time_ns())
        call = details.codec.on(ep)(
            request,
            timeout=self._timeout(details),
            metadata=details.metadata or None,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=details.compression,
        )
        details.last_call = call
        ep.in_flight += 1
        ep.calls += 1
        return ep, done, call

    async def _attempt_unary(self, details: ClientCallDetails, request: Any) -> Any:
        picked = None
        if self._resolved.is_set() and not self._closed:
            picked = self._balancer.pick(details.request_key, details.attempts)
        if picked is None:
            picked = await self._pick_slow(details)
        ep, done, call = self._launch(details, picked, request)
        t0 = _perf()
        try:
            response = await call
        except AioRpcError as exc:
            ep.failures += 1
            done(exc.code(), _perf() - t0)
            raise
        except asyncio.CancelledError:
            done(_CANCELLED, _perf() - t0)
            raise
        finally:
            ep.in_flight -= 1
        done(_OK, _perf() - t0)
        return response

    async def _attempt_stream(self, details: ClientCallDetails, request: Any) -> Any:
        picked = None
        if self._resolved.is_set() and not self._closed:
            picked = self._balancer.pick(details.request_key, details.attempts)
        if picked is None:
            picked = await self._pick_slow(details)
        ep, done, call = self._launch(details, picked, request)
        t0 = _perf()

        def finished(c: Any) -> None:
            ep.in_flight -= 1
            self._spawn(_report_stream(c, ep, done, t0))

        call.add_done_callback(finished)
        return call

    # -- grpc.aio.Channel ---------------------------------------------------------------
    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _UnaryUnaryMultiCallable:
        """A multicallable for a unary-unary method (what generated stubs call)."""
        codec = _Codec(method, CallKind.UNARY_UNARY, request_serializer, response_deserializer)
        return _UnaryUnaryMultiCallable(self, codec)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _UnaryStreamMultiCallable:
        """A multicallable for a unary-stream (server streaming) method."""
        codec = _Codec(method, CallKind.UNARY_STREAM, request_serializer, response_deserializer)
        return _UnaryStreamMultiCallable(self, codec)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _StreamUnaryMultiCallable:
        """A multicallable for a stream-unary (client streaming) method."""
        codec = _Codec(method, CallKind.STREAM_UNARY, request_serializer, response_deserializer)
        return _StreamUnaryMultiCallable(self, codec)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> _StreamStreamMultiCallable:
        """A multicallable for a bidirectional streaming method."""
        codec = _Codec(method, CallKind.STREAM_STREAM, request_serializer, response_deserializer)
        return _StreamStreamMultiCallable(self, codec)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """Best connectivity over all endpoints: READY if any is, else IDLE/CONNECTING,
        else TRANSIENT_FAILURE; IDLE with no endpoint; SHUTDOWN once closed."""
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if not self._endpoints:
            return grpc.ChannelConnectivity.IDLE
        best = min(ep.state for ep in self._endpoints.values())
        return {
            EndpointState.READY: grpc.ChannelConnectivity.READY,
            EndpointState.IDLE: grpc.ChannelConnectivity.CONNECTING,
            EndpointState.FAILING: grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        }[best]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once :meth:`get_state` differs from ``last_observed_state``."""
        while self.get_state() == last_observed_state and not self._closed:
            await self._changed.wait()

    async def channel_ready(self) -> None:
        """Wait until at least one endpoint is READY (no timeout; wrap in ``wait_for``)."""
        while self.get_state() is not grpc.ChannelConnectivity.READY:
            if self._closed:
                raise MeshRpcError(_CANCELLED, f"channel to {self.service!r} is closed")
            await self._changed.wait()

    async def wait_for_endpoints(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until at least ``count`` endpoints are known and READY.

        Raises:
            TimeoutError: not reached within ``timeout_s`` seconds.
        """
        async def reached() -> None:
            while sum(ep.state is EndpointState.READY
                      for ep in self._endpoints.values()) < count:
                await self._changed.wait()

        await asyncio.wait_for(reached(), timeout_s)

    def endpoints(self) -> list[Endpoint]:
        """The current endpoints (a snapshot list, sorted by instance id)."""
        return [self._endpoints[k] for k in sorted(self._endpoints)]

    def stats(self) -> list[dict[str, Any]]:
        """Per-instance counters, including recently removed instances.

        Returns:
            ``[{"instance_id", "address", "state", "present", "ejected", "calls",
            "failures", "in_flight"}, ...]`` sorted by instance id.
        """
        ejected = set(self._balancer.ejected()) if isinstance(
            self._balancer, EjectingBalancer) else set()
        return [
            {
                "instance_id": key,
                "address": ep.instance.address,
                "state": ep.state.name,
                "present": key in self._endpoints,
                "ejected": key in ejected,
                "calls": ep.calls,
                "failures": ep.failures,
                "in_flight": ep.in_flight,
            }
            for key, ep in sorted(self._history.items())
        ]

    def describe(self) -> dict[str, Any]:
        """A JSON-able view for ``/debug/mesh``: endpoints with state, balancer load, EWMA,
        ejection, and the active policies (retry stats and budget, timeouts, outlier)."""
        loads: dict[str, dict[str, Any]] = {}
        inner = self._balancer.inner if isinstance(self._balancer, EjectingBalancer) \
            else self._balancer
        if isinstance(inner, P2C):
            loads = {row["instance_id"]: row for row in inner.snapshot()}  # type: ignore[misc]
        endpoints = []
        for row in self.stats():
            extra = loads.get(row["instance_id"], {})
            endpoints.append({**row, "rtt_ms": extra.get("rtt_ms"), "load_ms": extra.get("load_ms"),
                              "pending": extra.get("pending")})
        opts = self.options
        retry: dict[str, Any] | None = None
        if self.retry is not None:
            st = self.retry.stats
            retry = {"calls": st.calls, "retries": st.retries, "hedges": st.hedges,
                     "budget_exhausted": st.budget_exhausted,
                     "gave_up_deadline": st.gave_up_deadline,
                     "budget_left": round(self.retry.budget_left(), 2),
                     "budget": repr(self.retry.options.budget)}
        return {
            "service": self.service,
            "state": self.get_state().name,
            "balancer": type(inner).__name__,
            "ejections": self._balancer.ejections
            if isinstance(self._balancer, EjectingBalancer) else 0,
            "watch_errors": self.watch_errors,
            "endpoints": endpoints,
            "retry": retry,
            "outlier": None if opts.outlier is None else repr(opts.outlier),
            "timeout_s": opts.timeout_s,
            "method_timeouts": dict(opts.method_timeouts),
            "propagate_deadline": opts.propagate_deadline,
            "tls": opts.tls is not None or opts.credentials is not None,
        }

    async def close(self, grace: float | None = None) -> None:
        """Stop discovery and close every sub-channel, letting calls finish for ``grace`` s."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        self._watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch_task
        for task in list(self._state_tasks.values()):
            task.cancel()
        self._state_tasks.clear()
        eps = list(self._endpoints.values())
        self._endpoints.clear()
        self._balancer.update([])
        await asyncio.gather(*(ep.channel.close(grace) for ep in eps),
                             return_exceptions=True)
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._owns_registry:
            await self.registry.close()

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"MeshChannel({self.service!r}, endpoints={len(self._endpoints)})"


async def _report_stream(call: Any, ep: Endpoint, done: Any, t0: float) -> None:
    latency = _perf() - t0
    try:
        code = _CANCELLED if call.cancelled() else await call.code()
    except Exception:
        code = _UNKNOWN
    if code is not _OK:
        ep.failures += 1
    done(code, latency)


# -- call objects ------------------------------------------------------------------------
class _UnaryResponseCall:
    """The call object of unary-unary and stream-unary calls: await it for the response.

    Runs inline when awaited directly (no extra task); the metadata and status accessors
    wait for the call to finish and then answer from the last attempt.
    """

    __slots__ = ("_callbacks", "_details", "_exc", "_fut", "_invoke", "_request", "_response",
                 "_started", "_task")

    def __init__(self, details: ClientCallDetails, request: Any, invoke: Any) -> None:
        self._details = details
        self._request = request
        self._invoke = invoke
        self._started = False
        self._task: asyncio.Task[Any] | None = None
        self._fut: asyncio.Future[None] | None = None
        self._response: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] | None = None

    def __await__(self) -> Any:
        if not self._started:
            return self._run().__await__()
        return self._result().__await__()

    async def _run(self) -> Any:
        self._started = True
        try:
            self._response = await self._invoke(self._details, self._request)
            return self._response
        except BaseException as exc:
            self._exc = exc
            raise
        finally:
            fut = self._fut
            if fut is None:
                self._fut = fut = asyncio.get_running_loop().create_future()
            if not fut.done():
                fut.set_result(None)
            if self._callbacks:
                for cb in self._callbacks:
                    cb(self)

    def _start(self) -> None:
        if not self._started:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(_retrieve)

    async def _finished(self) -> None:
        self._start()
        if self._fut is None:
            self._fut = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._fut)

    async def _result(self) -> Any:
        await self._finished()
        if self._exc is not None:
            raise self._exc
        return self._response

    def cancel(self) -> bool:
        """Cancel the call (the running attempt, or the pending task)."""
        if self.done():
            return False
        last = self._details.last_call
        if last is not None:
            return bool(last.cancel())
        if self._task is not None:
            return self._task.cancel()
        return False

    def cancelled(self) -> bool:
        """Whether the call ended cancelled."""
        return isinstance(self._exc, asyncio.CancelledError) or (
            isinstance(self._exc, AioRpcError) and self._exc.code() is _CANCELLED
        )

    def done(self) -> bool:
        """Whether the call has finished (with any outcome)."""
        return self._fut is not None and self._fut.done()

    def time_remaining(self) -> float | None:
        """Seconds before the deadline, or ``None`` without one."""
        return self._details.time_remaining_s()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` when the call finishes (at once if it has)."""
        if self.done():
            callback(self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    async def initial_metadata(self) -> Metadata:
        """Initial metadata of the last attempt (waits for the call to finish)."""
        await self._finished()
        last = self._details.last_call
        return await last.initial_metadata() if last is not None else Metadata()

    async def trailing_metadata(self) -> Metadata:
        """Trailing metadata of the last attempt (waits for the call to finish)."""
        await self._finished()
        if isinstance(self._exc, AioRpcError) and self._details.last_call is None:
            return self._exc.trailing_metadata()
        last = self._details.last_call
        return await last.trailing_metadata() if last is not None else Metadata()

    async def code(self) -> grpc.StatusCode:
        """Final status code (waits for the call to finish)."""
        await self._finished()
        if isinstance(self._exc, AioRpcError):
            return self._exc.code()
        if isinstance(self._exc, asyncio.CancelledError):
            return _CANCELLED
        return _UNKNOWN if self._exc is not None else _OK

    async def details(self) -> str:
        """Final status message (waits for the call to finish)."""
        await self._finished()
        if isinstance(self._exc, AioRpcError):
            return self._exc.details() or ""
        return ""

    async def wait_for_connection(self) -> None:
        """Wait until the call has finished; raises its error if it failed."""
        await self._result()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # mark retrieved; the caller sees it through the call object


class _StreamResponseCall:
    """The call object of unary-stream and stream-stream calls.

    The attempt opens on first use (iteration, ``read``, ``write``, metadata); afterwards
    every method is the grpc.aio call's own.
    """

    __slots__ = ("_callbacks", "_details", "_open", "_opening", "_request")

    def __init__(self, details: ClientCallDetails, request: Any, open_: Any) -> None:
        self._details = details
        self._request = request
        self._open = open_
        self._opening: asyncio.Task[Any] | None = None
        self._callbacks: list[Callable[[Any], None]] = []

    async def _call(self) -> Any:
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(
                self._open(self._details, self._request)
            )
        call = await asyncio.shield(self._opening)
        if self._callbacks:
            for cb in self._callbacks:
                call.add_done_callback(lambda _c, cb=cb: cb(self))
            self._callbacks.clear()
        return call

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        call = await self._call()
        async for response in call:
            yield response

    async def read(self) -> Any:
        """Read one response; ``grpc.aio.EOF`` at the end."""
        return await (await self._call()).read()

    async def write(self, request: Any) -> None:
        """Write one request (stream-stream calls made without a request iterator)."""
        await (await self._call()).write(request)

    async def done_writing(self) -> None:
        """Half-close the request stream."""
        await (await self._call()).done_writing()

    async def wait_for_connection(self) -> None:
        """Wait until the attempt's connection is up."""
        await (await self._call()).wait_for_connection()

    async def initial_metadata(self) -> Metadata:
        """Initial metadata of the attempt."""
        return await (await self._call()).initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> Metadata:
        """Trailing metadata of the attempt (after the stream ends)."""
        return await (await self._call()).trailing_metadata()  # type: ignore[no-any-return]

    async def code(self) -> grpc.StatusCode:
        """Final status code."""
        try:
            call = await self._call()
        except AioRpcError as exc:
            return exc.code()
        return await call.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        """Final status message."""
        try:
            call = await self._call()
        except AioRpcError as exc:
            return exc.details() or ""
        return await call.details()  # type: ignore[no-any-return]

    def _opened(self) -> Any:
        """The opened call object (a grpc.aio call, or what an interceptor returned, e.g.
        a retrying stream), or ``None`` while the attempt is still being opened."""
        task = self._opening
        if task is None or not task.done() or task.cancelled() or task.exception():
            return None
        return task.result()

    def cancel(self) -> bool:
        """Cancel the call."""
        opened = self._opened()
        if opened is not None:
            return bool(opened.cancel())
        last = self._details.last_call
        if last is not None:
            return bool(last.cancel())
        if self._opening is not None:
            return self._opening.cancel()
        return False

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        opened = self._opened()
        if opened is not None:
            return bool(opened.cancelled())
        last = self._details.last_call
        return bool(last.cancelled()) if last is not None else False

    def done(self) -> bool:
        """Whether the call has finished."""
        opened = self._opened()
        if opened is not None:
            return bool(opened.done())
        last = self._details.last_call
        return bool(last.done()) if last is not None else False

    def time_remaining(self) -> float | None:
        """Seconds before the deadline, or ``None`` without one."""
        return self._details.time_remaining_s()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` when the call finishes."""
        opened = self._opened()
        if opened is not None:
            opened.add_done_callback(lambda _c: callback(self))
        else:
            self._callbacks.append(callback)


# -- multicallables ----------------------------------------------------------------------
class _MultiCallable:
    __slots__ = ("_channel", "_codec", "_hash_key", "_margin", "_propagate", "_timeout")

    def __init__(self, channel: MeshChannel, codec: _Codec) -> None:
        self._channel = channel
        self._codec = codec
        opts = channel.options
        self._timeout = channel._timeouts.lookup(codec.method)
        self._propagate = opts.propagate_deadline
        self._margin = opts.deadline_margin_s
        self._hash_key = opts.hash_key_metadata

    def _details(
        self,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> ClientCallDetails:
        details = ClientCallDetails(
            service=self._channel.service,
            method=self._codec.method,
            kind=self._codec.kind,
            timeout_s=self._timeout if timeout is None else timeout,
            metadata=_as_pairs(metadata),
            wait_for_ready=wait_for_ready,
            credentials=credentials,
            compression=compression,
        )
        details.codec = self._codec
        if self._propagate:
            inherited = current_deadline()
            if inherited is not None:
                inherited -= self._margin
                if details.deadline is None or inherited < details.deadline:
                    details.deadline = inherited
        if self._hash_key is not None:
            for k, v in details.metadata:
                if k == self._hash_key:
                    details.request_key = v if isinstance(v, str) else v.decode()
                    break
        return details


def _as_pairs(metadata: Any) -> Sequence[tuple[str, str | bytes]] | None:
    if not metadata:
        return None
    if isinstance(metadata, Metadata):
        return list(metadata)
    return metadata  # type: ignore[no-any-return]


class _UnaryUnaryMultiCallable(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        d = self._details(timeout, metadata, credentials, wait_for_ready, compression)
        return _UnaryResponseCall(d, request, self._channel._unary)


class _StreamUnaryMultiCallable(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        if request_iterator is None:
            raise ConfigError(
                "meshkit stream-unary calls need a request iterator (retries may replay it)"
            )
        d = self._details(timeout, metadata, credentials, wait_for_ready, compression)
        return _UnaryResponseCall(d, request_iterator, self._channel._unary)


class _UnaryStreamMultiCallable(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        d = self._details(timeout, metadata, credentials, wait_for_ready, compression)
        return _StreamResponseCall(d, request, self._channel._stream)


class _StreamStreamMultiCallable(_MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        d = self._details(timeout, metadata, credentials, wait_for_ready, compression)
        return _StreamResponseCall(d, request_iterator, self._channel._stream)
