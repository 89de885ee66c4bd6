"""The admin HTTP server: metrics, health, readiness and a debug view of the mesh."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import gzip
import ipaddress
import json
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Sample

from meshkit._aio_http import start_app
from meshkit._config import check_bool, check_instance, check_int
from meshkit._hosts import check_host, is_loopback, uri_host
from meshkit._stats import ChannelStats, ServerStats
from meshkit.errors import ConfigError
from meshkit.observability._dashboard import DASHBOARD_JSON_PATH, DASHBOARD_PATH, DashboardFeed
from meshkit.observability._live import (
    UnreadServer,
    live_channel_stats_async,
    live_server_loops,
    live_server_stats_async,
    live_servers_async,
)
from meshkit.observability._metrics import (
    default_registry,
    mesh_read_elsewhere,
    reading_on,
    rpc_metrics,
)

__all__ = ["AdminOptions", "AdminServer", "Handler"]

_log = structlog.get_logger("meshkit.observability.admin")
_PATH_RE = re.compile(r"/[A-Za-z0-9._~\-/]*")  # fullmatch: ``$`` passes "/x\n"
_METHOD_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110 5.6.2)
# a Host header: a bracketed IPv6 literal or a name/IPv4 address, then an optional port
_HOST_HEADER_RE = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::[0-9]*)?")
_WEDGED_S = 10.0
"""Seconds a callback sent to another event loop of the process (one serving a
MeshServer) may wait unrun before ``/livez`` calls that loop wedged."""
_RENDER_THREADS = 2
"""Threads an admin server renders ``/metrics`` in: two scrapes at once (a pair of
Prometheus replicas) each get one; a third waits."""
_ENCODE_THREADS = 1
"""Threads an admin server encodes ``/debug/mesh`` and ``/debug/dashboard.json`` in: not
the render threads, where a collector of the application's that is slow (or hangs) held
them back with the scrapes waiting on it."""
_GZIP_LEVEL = 1
"""The gzip level of ``/metrics``: a 1 MB exposition (10,000 samples) ~16x smaller in
~4 ms; level 6 or 9 (``gzip.compress``'s default) takes four times longer for 3-6 %
less."""
_MAX_CONNECTIONS = 100
"""Connections an admin server keeps open at once: one more (a scraper's new one, a
client opening many and sending nothing) closes the oldest (:class:`_ConnectionCap`),
so that idle connections, each otherwise kept for the 75 s keep-alive, cannot hold
sockets and memory without bound."""
_EVICTED_GRACE_S = 30.0
"""Seconds a connection closed past :data:`_MAX_CONNECTIONS` may take to end before it
is aborted (its unsent data dropped): one answering is closed once its answer is sent,
but a client that never reads it keeps the write waiting for ever (aiohttp has no write
timeout), and a socket closed with data unsent stays open until the client reads it.
Longer than a scrape's usual timeout (Prometheus: 10 s)."""
_RESERVED = frozenset({"/metrics", "/healthz", "/livez", "/readyz", "/debug/mesh", DASHBOARD_PATH,
                       DASHBOARD_JSON_PATH})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""An aiohttp handler: ``async def handler(request) -> web.Response``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminOptions:
    """Where the admin server listens and what it serves.

    Args:
        host: address to bind (default ``"127.0.0.1"``: loopback only; ``"0.0.0.0"`` to let
            a Prometheus on another machine scrape it; ``"::"`` or ``"[::]"`` listens
            dual-stack, IPv4 and IPv6): an IP address (IPv6 bracketed or not) or a host
            name.
        port: TCP port; 0 (default) picks a free one, returned by :meth:`AdminServer.start`.
        registry: registry served at ``/metrics``; default the process's meshkit registry.
        require_server: plain ``/readyz`` answers 503 while no
            :class:`~meshkit.MeshServer` is live (a service process before it binds);
            default ``True``. Set ``False`` for client-only processes. ``/readyz?service=``
            is not affected (404 for a service not served).

    Raises:
        ConfigError: a port that is not an integer in 0..65535 (a bool included), a
            ``registry`` that is not a ``CollectorRegistry`` instance (the class, say), or
            a host that is neither an IP address nor a host name (quoted).
    """

    host: str = "127.0.0.1"
    port: int = 0
    registry: CollectorRegistry | None = None
    require_server: bool = True

    def __post_init__(self) -> None:
        check_host("host", self.host)
        check_bool("require_server", self.require_server)
        check_int("port", self.port, low=0, high=65535)  # not True: that is port 1
        check_instance("registry", self.registry, CollectorRegistry)


class AdminServer:
    """An aiohttp server (one per process, off the gRPC port) with:

    =====================  ================================================================
    route                  answer
    =====================  ================================================================
    /                      the live dashboard (HTML, refreshing every second): services
                           served and dialed, endpoints with state, P2C load, EWMA latency,
                           ejections, retry budget, registry health, the request
                           gate's refusals, and RED per method
    /debug/dashboard.json  the dashboard's data (:class:`DashboardFeed`): the snapshots below
                           plus per method rate, errors by code and p50/p99 over 10 s;
                           like ``/debug/mesh``, read on the loop and encoded in the
                           admin server's own threads (below)
    /metrics               the meshkit registry (RPC and mesh metrics) in the Prometheus
                           text format, or OpenMetrics when the Accept header prefers
                           it (each format weighed by its most specific media range,
                           RFC 9110 12.5.1; a tie of ``*/*`` alone is the text format);
                           collected and rendered in the admin server's own thread (the
                           channels and servers are read on their own event loops: this
                           one, or another thread's for those started there, within
                           0.5 s, else from here), so a scrape does
                           not stall the calls the loop serves, nor waits behind work in
                           the loop's default executor (``asyncio.to_thread``); text not
                           encodable as UTF-8 (a lone surrogate) is sent as U+FFFD with a
                           warning, not as a 500; gzip compressed (in that thread) when
                           the ``Accept-Encoding`` header takes ``gzip``, as Prometheus'
                           does (``Vary: Accept, Accept-Encoding``); with
                           ``?name[]=<series>`` (repeatable) only the samples of those
                           series names (``foo_total``, ``foo_bucket``), as
                           prometheus_client's own exposition answers (its
                           ``restricted_registry``); 200 with no sample when none is
                           served
    /livez                 liveness (a Kubernetes ``livenessProbe``): 200 ``ok`` (text,
                           ``Cache-Control: no-store``) while the process's event loops
                           run, so it fails only when one is wedged (a blocking call, a
                           busy loop): the admin server's own loop by not answering (the
                           probe times out); another loop a live MeshServer was started on
                           (a thread's own, served by this admin server) with 503 naming
                           its services, once a callback each probe sends it has waited
                           unrun 10 s (the probe never waits for it). Never because a
                           server drains, is not registered or not serving, nor because
                           the registry or another dependency is down (a restart would not
                           bring those back: that is ``/readyz``'s to report)
    /healthz               the same answer as ``/livez`` (its older name)
    /readyz                the whole process: 200 when every live MeshServer of it
                           (whatever its loop) is registered and not draining; 503 with
                           the reasons (JSON: ``not_ready`` entries with ``service``,
                           ``instance_id``, ``draining``, ``registered`` (in the
                           registry now: false while withdrawn for its health status,
                           ``ServeOptions.follow_health``), ``serving``) while one
                           drains, is not registered yet or not serving, or (with
                           ``require_server``) when there is none; a
                           server whose ``stats()`` raises (a custom registry's
                           ``status()`` throwing) is not ready too, its entry
                           ``service``, ``instance_id`` and ``error`` (the exception's
                           class name only: its message may hold a secret; logged once
                           as a warning), reason ``stats() raised <class>``. One
                           draining server
                           makes it 503 for all: the probe of a process that is going
                           away (a Kubernetes readiness probe of a pod)
    /readyz?service=S      one mesh service of the process: 200 when each live server of
                           ``S`` is ready (JSON ``instances``); 503 while one of them
                           drains, is not registered yet, not serving or its
                           ``stats()`` raises; 404 when the process has no
                           live server of ``S`` (never started, stopped). The readiness
                           of one instance while another server of the process drains
    ...&instance=I         the server of ``S`` registered as instance ``I`` (what
                           ``meshkit services`` probes): 200, 503 while it drains (or,
                           none registered as ``I``, while a server of ``S`` registers),
                           404 when none is live; a query without exactly one non-empty
                           ``service``, or with more than one ``instance``, is 400
                           (other parameters are ignored)
    /debug/mesh            JSON: ``servers`` (``MeshServer.stats()``, each with its own
                           ``service``, ``instance_id``, ``ready`` and ``draining``) and
                           ``channels`` (``MeshChannel.stats()``: endpoints, balancer
                           load, EWMA, ejection, policies) of this process (one whose
                           ``stats()`` raises left out, as on the dashboard); the
                           snapshots taken on the loop, turned into JSON in the admin
                           server's own threads (a channel to 2,000 endpoints: ~45 ms
                           the loop no longer waits)
    =====================  ================================================================

    A server listening on loopback addresses only (the default ``127.0.0.1``, ``::1``,
    ``localhost``, or a host name that resolves to loopback, as a machine's own name often
    does) answers only requests whose ``Host`` header is an IP address, ``localhost``
    (``*.localhost`` too) or the configured host name, any port, and others ``403``: a
    web page whose name was re-resolved to 127.0.0.1 (DNS rebinding) cannot read its
    routes from a browser on this machine. A server bound to another or the wildcard address answers
    any ``Host`` (a Prometheus scrapes it by pod IP or DNS name).

    Collectors on the registry are called in a worker thread, as prometheus-client's own
    HTTP server calls them: they must be thread-safe, as its own metric types and
    meshkit's are. The thread is the admin server's own (two of them, named
    ``meshkit-admin-metrics_<n>``, from :meth:`start` to :meth:`stop`), not the loop's
    default executor: work queued there (``asyncio.to_thread``, blocking handlers, name
    lookups) does not hold a scrape back. The JSON of ``/debug/mesh`` and the dashboard
    is encoded in one more (``meshkit-admin-json_0``): scrapes waiting on a slow
    collector do not hold the debug views back.

    Every answer carries ``X-Content-Type-Options: nosniff``; those of the routes above
    and every error (``400``, ``403``, ``404``, ``405``, ``503``) ``Cache-Control:
    no-store`` too (a probe or the debug view is never answered from a cache). Not the
    ``400`` aiohttp itself answers a request it cannot parse (a malformed header line,
    a bad ``Content-Length``): it is made before the application sees a request, and
    has neither (its ``text/plain`` body quotes the offending line).

    At most 100 connections are kept open at once (``_MAX_CONNECTIONS``): one more
    closes the oldest (an idle one at once, one mid-answer after its answer; one not
    ended 30 s later, its client not reading the answer, is aborted), so a client
    opening many keep-alive connections and sending nothing (each otherwise kept 75 s),
    or asking and never reading, holds no more sockets than that for long.

    ``/metrics`` serves further registries given with :meth:`add_registry` (the shared
    admin server of ``serve()``: the default registry and every server's telemetry
    registry), merged into one exposition (see :meth:`add_registry`).

    Extra routes (a JWKS document, say) are added with :meth:`add_route` before
    :meth:`start`. Example::

        admin = AdminServer(AdminOptions(port=9464))
        port = await admin.start()
        ...
        await admin.stop()

    Args:
        options: :class:`AdminOptions` (default: loopback, a free port).
        dashboard_registry: the ``CollectorRegistry`` whose RPC metrics the dashboard
            shows (default ``None``: the one ``/metrics`` serves, ``options.registry``
            or the meshkit registry); ``serve()`` passes its telemetry's.

    Raises:
        ConfigError: ``options`` is no :class:`AdminOptions` (a port given for
            ``AdminOptions(port=...)``), or ``dashboard_registry`` no
            ``CollectorRegistry`` instance (the class itself); quoted.
    """

    def __init__(self, options: AdminOptions | None = None, *,
                 dashboard_registry: CollectorRegistry | None = None) -> None:
        check_instance("options", options, AdminOptions)
        check_instance("dashboard_registry", dashboard_registry, CollectorRegistry)
        self.options = options or AdminOptions()
        self._registry = self.options.registry or default_registry()
        # served beside it (add_registry): id -> (registry, how many added it)
        self._more: dict[int, tuple[CollectorRegistry, int]] = {}
        # what the registries that left counted (remove_registry), added to the series
        # the served ones still list; pruned in the render threads, under the lock
        self._left: list[_Left] = []
        self._left_lock = threading.Lock()
        # the families (and the live mesh's collector, which the added registries' leave
        # to this one) exist in the own registry before the first scrape; the dashboard
        # shows the RPC records of one registry (``dashboard_registry``, default the own)
        own = rpc_metrics(self._registry)
        # the registry the dashboard shows; once it leaves (remove_registry), the first
        # one still served
        self._shown = self._registry if dashboard_registry is None else dashboard_registry
        self._dashboard = DashboardFeed(own if dashboard_registry is None
                                        else rpc_metrics(dashboard_registry))
        self._extra: list[tuple[str, str, Handler]] = []
        self._unencodable: set[str] = set()  # families warned about (see _metrics)
        self._runner: web.AppRunner | None = None
        self._render_threads: ThreadPoolExecutor | None = None  # from start() to stop()
        self._encode_threads: ThreadPoolExecutor | None = None  # the same, for the JSON
        # while start() runs: done when it has returned or raised (stop() waits for it)
        self._starting: asyncio.Future[None] | None = None
        self._stop_asked = False  # stop() during start(): the start undoes itself
        self._host_checked = True  # listening on loopback only (see _local_host_only)
        # /livez's outstanding ping per other loop: when sent (monotonic s), None once run
        self._pings: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ping] = \
            weakref.WeakKeyDictionary()
        self.port = 0

    def add_route(self, path: str, handler: Handler, *, method: str = "GET") -> None:
        """Serve ``handler`` at ``path`` too, e.g.
        ``add_route("/.well-known/jwks.json", jwks_handler)``.

        Args:
            path: absolute URL path (letters, digits, ``._~-/``), not a built-in route.
            handler: ``async (aiohttp.web.Request) -> aiohttp.web.StreamResponse``.
            method: HTTP method (default ``"GET"``, which also answers HEAD), any case;
                ``"*"`` for every method.

        Raises:
            ConfigError: a malformed or reserved path, a non-callable handler, a method
                that is not an HTTP token (RFC 9110 5.6.2), or a path added already with
                that method (``GET`` and ``HEAD`` clash, ``*`` with any), quoted; each
                would make :meth:`start` fail.
            RuntimeError: the server is already started.
        """
        if self._runner is not None:
            raise RuntimeError("add routes before start()")
        if not isinstance(path, str) or not _PATH_RE.fullmatch(path) or path in _RESERVED:
            raise ConfigError(f"path must be a free absolute URL path, got {path!r}")
        if not callable(handler):
            raise ConfigError(f"handler must be an async callable, got {handler!r}")
        if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
            raise ConfigError(f"method must be an HTTP method, got {method!r}")
        verb = method.upper()
        taken = {m for m, p, _ in self._extra if p == path}
        clash = {verb, "*", *(("GET", "HEAD") if verb in ("GET", "HEAD") else ())}
        if taken & clash or (verb == "*" and taken):
            raise ConfigError(f"{verb} {path} is added already (as {sorted(taken)!r})")
        self._extra.append((verb, path, handler))

    def add_registry(self, registry: CollectorRegistry) -> None:
        """Serve ``registry`` at ``/metrics`` too, until :meth:`remove_registry` was
        called for it as many times as this (the admin server's own registry is served
        anyway: adding it does nothing). For one admin server shared by servers that
        count into registries of their own; call on the admin server's event loop.

        The registries make one exposition: the own registry's families first, then each
        added registry's, in the order added; a family of a name already there is merged
        into it: a series (name and labels) counted in two registries (one method served
        by two servers, each counting into its own) is their sum for counters,
        histograms (of the same buckets: a histogram series whose bounds differ from
        the first registry's is left out), summaries and the ``grpc_*_in_flight``
        gauges (``_created`` the earliest), the first registry's for other gauges (a
        certificate's notAfter) and quantiles; a family whose type differs from the
        first's of its name is left out.
        A registry that leaves (:meth:`remove_registry`) leaves what it counted (its
        counters', histograms' and summaries' samples, quantiles aside) in the series
        that a served registry still lists, so that a summed series never goes backwards
        while it is listed (Prometheus would read a counter reset, and ``rate()`` count
        the rest again as new); its series no served registry lists leave with it, and
        so does what it left in a series once no served registry lists that series (a
        series may disappear); added again, its own counts hold what it left.
        The ``meshkit_client_*``/``meshkit_registry_*``/``meshkit_server_*`` families
        read from the live channels and servers come once (those of the own registry's
        :class:`MeshCollector`: every registry's reads the same ones).

        Raises:
            ConfigError: ``registry`` is not a ``CollectorRegistry`` instance (``None``,
                the class itself), quoted: every scrape would fail on it.
        """
        check_instance("registry", registry, CollectorRegistry, optional=False)
        if registry is self._registry:
            return
        held = self._more.get(id(registry))
        self._more[id(registry)] = (registry, 1 if held is None else held[1] + 1)
        if held is None:  # back: its own counts hold what it left
            with self._left_lock:
                self._left = [left for left in self._left
                              if left.registry() is not registry]

    def remove_registry(self, registry: CollectorRegistry) -> None:
        """Undo one :meth:`add_registry` of ``registry``: once undone as often as added,
        ``/metrics`` no longer serves it (nothing happens for one not added), nor does the
        dashboard show it (it shows the first registry still added, or the admin
        server's own); what it counted stays in the series another served registry
        lists (see :meth:`add_registry`: it is collected now, once, on the calling
        loop). A registry whose collection raises then leaves with all it counted
        (warned)."""
        held = self._more.get(id(registry))
        if held is None or held[0] is not registry:
            return
        if held[1] > 1:
            self._more[id(registry)] = (registry, held[1] - 1)
            return
        del self._more[id(registry)]
        if registry is self._shown:  # the dashboard shows a registry still served
            self._shown = next((r for r, _ in self._more.values()), self._registry)
            self._dashboard.follow(rpc_metrics(self._shown))
        try:  # what it counted, kept in the series others still list (add_registry)
            with mesh_read_elsewhere():
                counted = [m for m in map(_monotonic, registry.collect()) if m is not None]
        except Exception:
            _log.warning("a registry leaving /metrics could not be collected: its counts "
                         "leave with it", exc_info=True)
            return
        with self._left_lock:
            # those of registries freed since folded (bounded without scrapes too)
            self._left = _folded([*self._left, _Left(registry, counted)])

    async def start(self) -> int:
        """Bind and serve; returns the bound port.

        When :meth:`stop` is called while ``start()`` runs, the start is undone (the
        site closed, the render threads released) and raises ``RuntimeError``; that
        :meth:`stop` returns once the undoing is done. The server can be started again.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started (or starting), or :meth:`stop` was called
                while starting.
        """
        if self._runner is not None or self._starting is not None:
            raise RuntimeError("admin server already started")
        # until bound: a second start() meanwhile is refused, a stop() waits for it
        done = self._starting = asyncio.get_running_loop().create_future()
        self._stop_asked = False
        try:
            return await self._start()
        finally:
            self._starting = None
            done.set_result(None)

    async def _start(self) -> int:
        # the Host check: on for a loopback address, and for a host name until the bind
        # shows where it listens (a name may resolve to loopback: the machine's own name)
        host = self.options.host
        self._host_checked = is_loopback(host) or not _is_ip_literal(host)
        check = self._local_host_only

        @web.middleware
        async def local_host_only(request: web.Request,
                                  handler: Handler) -> web.StreamResponse:
            return await check(request, handler)

        app = web.Application(middlewares=[local_host_only])
        app.on_response_prepare.append(_no_store_nosniff)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)  # the same: liveness
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/debug/mesh", self._debug_mesh)
        app.add_routes(self._dashboard.routes(offload=self._off_loop))
        for method, path, handler in self._extra:
            if method == "GET":  # answers HEAD too, as the routes above (RFC 9110 9.3.2)
                app.router.add_get(path, handler)
            else:
                app.router.add_route(method, path, handler)
        # no thread started until the first scrape
        self._render_threads = ThreadPoolExecutor(max_workers=_RENDER_THREADS,
                                                  thread_name_prefix="meshkit-admin-metrics")
        self._encode_threads = ThreadPoolExecutor(max_workers=_ENCODE_THREADS,
                                                  thread_name_prefix="meshkit-admin-json")
        try:
            runner, port = await start_app(app, self.options.host, self.options.port)
        except BaseException:
            self._release_render_threads()
            raise
        if self._stop_asked:  # stop() was called meanwhile: it waits for this undoing
            try:
                await runner.cleanup()
            finally:
                self._release_render_threads()
            raise RuntimeError("admin server stopped while starting")
        self._host_checked = _all_loopback(runner.addresses)
        if runner.server is not None:
            _ConnectionCap(runner.server, _MAX_CONNECTIONS)
        self._runner, self.port = runner, port
        _log.info("admin server listening", address=f"{uri_host(self.options.host)}:{self.port}")
        return self.port

    async def stop(self) -> None:
        """Stop serving (safe to call twice or before :meth:`start`); the render threads
        end once a render under way is done (not waited for). Called while :meth:`start`
        runs, it has that start undone (``start()`` raises ``RuntimeError``) and returns
        once nothing listens; cancelled while it waits, the start is still undone."""
        starting = self._starting
        if starting is not None:
            self._stop_asked = True
            await asyncio.shield(starting)
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            self._release_render_threads()

    def _release_render_threads(self) -> None:
        """Release the render and JSON threads (each ends once its work under way is
        done, not waited for)."""
        pools = (self._render_threads, self._encode_threads)
        self._render_threads = self._encode_threads = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (IPv6 hosts bracketed)."""
        return f"http://{uri_host(self.options.host)}:{self.port}"

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _local_host_only(self, request: web.Request,
                               handler: Handler) -> web.StreamResponse:
        """The Host check of an admin server listening on loopback only (see
        :class:`AdminServer`; decided by the addresses bound, so a host name resolving to
        loopback is checked too): a request without ``Host`` (HTTP/1.0: no browser's),
        with a local one or naming the configured host goes on, others are answered
        403."""
        if not self._host_checked:
            return await handler(request)
        host = request.headers.get(hdrs.HOST)
        if host is None or _is_local_host_header(host) or _same_name(host, self.options.host):
            return await handler(request)
        return web.Response(status=403, text=(
            "403: this admin server listens on loopback and answers only requests addressed "
            "to an IP address, localhost or its configured host (Host header), against DNS "
            "rebinding\n"))

    # -- routes --------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        # the OpenMetrics text format when the scraper asks for it (Prometheus does)
        # every Accept field line: several mean their comma-joined list (RFC 9110 5.3)
        om = _wants_openmetrics(", ".join(request.headers.getall(hdrs.ACCEPT, [])))
        # off the loop: rendering thousands of samples (a channel to a 1,000-endpoint
        # service: ~5,000) takes tens of milliseconds, which every call in flight on
        # this loop would wait; in the admin server's own threads, not behind whatever
        # holds the loop's default executor (asyncio.to_thread's)
        more = tuple(registry for registry, _ in self._more.values())
        with self._left_lock:  # taken with ``more``: a registry is in one of them
            left = tuple(self._left)
        # gzip when the scraper takes it (Prometheus asks on every scrape), compressed in
        # the render thread too
        zipped = _accepts_gzip(", ".join(request.headers.getall(hdrs.ACCEPT_ENCODING, [])))
        # name[]=<series>: only those samples (prometheus_client's exposition's
        # restricted_registry; Prometheus federation-style selection by series name)
        only = frozenset(request.query.getall("name[]", [])) or None
        loop = asyncio.get_running_loop()
        if self._render_threads is None:  # stopped meanwhile
            raise web.HTTPServiceUnavailable(text="admin server stopping\n")
        body, fixed = await loop.run_in_executor(
            self._render_threads, contextvars.copy_context().run, self._render, om, loop,
            more, zipped, left, only)
        new = sorted(fixed - self._unencodable)
        if new:
            self._unencodable.update(new)
            _log.warning("metric text not encodable as UTF-8 (a lone surrogate) sent as "
                         "U+FFFD", families=new)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = (openmetrics.CONTENT_TYPE_LATEST if om
                                        else text_format.CONTENT_TYPE_PLAIN_0_0_4)
        resp.headers[hdrs.VARY] = "Accept, Accept-Encoding"  # what the answer depends on
        if zipped:
            resp.headers[hdrs.CONTENT_ENCODING] = "gzip"
        return resp

    def _render(self, om: bool, loop: asyncio.AbstractEventLoop,
                more: tuple[CollectorRegistry, ...] = (), zipped: bool = False,
                left: tuple[_Left, ...] = (),
                only: frozenset[str] | None = None) -> tuple[bytes, set[str]]:
        """The exposition of the registry and ``more`` registries (merged, see
        :meth:`add_registry`), with what the registries that ``left`` counted in the
        series listed, OpenMetrics if ``om`` else the text format 0.0.4 (gzip
        compressed if ``zipped``), and the names of the families whose text had to be
        fixed; run in a worker thread, the mesh read on ``loop`` (:func:`reading_on`).
        With ``only`` (the query's ``name[]`` values), only the samples of those names
        (``foo_total``, ``foo_bucket``: series names, not family names), as
        prometheus_client's own ``registry.restricted_registry(names)`` answers; a family
        left with none is left out.

        Text not encodable as UTF-8 (a lone surrogate in a label value or help text:
        prometheus-client raises ``UnicodeEncodeError`` on it, which would make every
        scrape a 500 while it lasts) is rendered with each lone surrogate replaced by
        U+FFFD (:func:`_utf8_metric`); :meth:`_metrics` warns once per family.
        """
        generate: Callable[[Any], bytes] = (
            openmetrics.generate_latest if om else text_format.generate_latest)
        with reading_on(loop):
            metrics = list(self._registry.collect())
            if more:
                with mesh_read_elsewhere():
                    for registry in more:
                        metrics = _merged(metrics, registry.collect())
        if left:
            with self._left_lock:
                for gone in left:
                    metrics, gone.families = _kept(metrics, gone.families)
                self._left = _folded(self._left)
        if only is not None:
            metrics = [m for m in (_restricted(m, only) for m in metrics) if m is not None]
        try:
            body, names = generate(_Collected(metrics)), set()
        except UnicodeEncodeError:
            fixed = [_utf8_metric(m) for m in metrics]
            body = generate(_Collected(fixed))
            names = {m.name for m, f in zip(metrics, fixed, strict=True) if f is not m}
        return (gzip.compress(body, compresslevel=_GZIP_LEVEL) if zipped else body), names

    async def _healthz(self, request: web.Request) -> web.Response:
        # liveness (/livez, /healthz): this loop runs (it answers) and the other loops of
        # the process's servers ran the last callback sent them; nothing else
        wedged = self._wedged_services()
        if wedged:
            return web.Response(status=503, text=(
                f"503: the event loop of {', '.join(map(repr, wedged))} has run nothing "
                f"for {_WEDGED_S:g} s (wedged)\n"))
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    def _wedged_services(self) -> list[str]:
        """The services of the live servers whose event loop (not this one) left the
        callback this method sent it earlier unrun for ``_WEDGED_S`` seconds; sends each
        other running loop a new callback once the last one ran (never waits)."""
        own = asyncio.get_running_loop()
        now = time.monotonic()
        wedged: list[str] = []
        for loop, services in live_server_loops().items():
            if loop is own or loop.is_closed() or not loop.is_running():
                continue  # a loop not running serves nothing and is not wedged
            ping = self._pings.get(loop)
            if ping is not None and ping.sent is not None:
                if now - ping.sent >= _WEDGED_S:
                    wedged.extend(services)
                continue
            ping = self._pings[loop] = _Ping(now)
            try:
                loop.call_soon_threadsafe(ping.ran)
            except RuntimeError:  # closed meanwhile
                del self._pings[loop]
        return sorted(wedged)

    async def _readyz(self, request: web.Request) -> web.Response:
        query = request.query
        read, unread = await live_servers_async()
        servers: list[ServerStats | UnreadServer] = [*read, *unread]
        if "service" in query or "instance" in query:
            status, answer = _service_readiness(
                servers, query.getall("service", []), query.getall("instance", []))
            if status == 400:
                return web.Response(status=400, text=f"400: {answer['error']}\n")
            return web.json_response(answer, status=status)
        not_ready = [_not_ready(s) for s in servers if not s.ready]
        if not_ready or (self.options.require_server and not servers):
            body = {"ready": False, "not_ready": not_ready,
                    "reason": _reason(not_ready) if not_ready else "no server"}
            return web.json_response(body, status=503)
        return web.json_response({"ready": True, "servers": [s.service for s in servers]})

    async def _debug_mesh(self, request: web.Request) -> web.Response:
        # the snapshots on the loop (stats() reads what only the loop may touch); turning
        # them into dicts and JSON (~45 ms for a channel to 2,000 endpoints) off it
        # (each read on its own loop: a channel of another thread's is read there)
        now = time.time()
        servers = await live_server_stats_async()
        channels = await live_channel_stats_async()
        text = await self._off_loop(functools.partial(_debug_mesh_json, now, servers,
                                                      channels))
        return web.Response(text=text, content_type="application/json")

    async def _off_loop(self, encode: Callable[[], str]) -> str:
        """``encode()`` run in the admin server's JSON thread (``/metrics`` renders in
        threads of its own, which a slow collector may hold), so that a
        large answer does not stall the calls the loop serves; on the loop once the
        threads are gone (:meth:`stop` under way, a handler still finishing)."""
        pool = self._encode_threads
        if pool is None:
            return encode()
        return await asyncio.get_running_loop().run_in_executor(pool, encode)


class _ConnectionCap:
    """At most ``limit`` open connections on an aiohttp ``web.Server``: each one past it
    closes the oldest (an idle one at once, as aiohttp's keep-alive timeout closes it:
    ``force_close()``; one answering once its answer is sent: ``close()``), so a
    client opening many connections and sending nothing cannot hold more than
    ``limit`` sockets (aiohttp has no such option: its only bound
    is the keep-alive timeout). The oldest, not the new one, goes: refusing new ones
    would let whoever holds ``limit`` idle connections lock a Prometheus out; a scraper
    whose keep-alive connection was closed opens a new one. A connection so closed
    that has not ended :data:`_EVICTED_GRACE_S` later (a client that never reads its
    answer: the write, or the socket's close, waits on it for ever) is aborted.

    Installed on the server's ``connection_made`` (the public hook each
    ``RequestHandler`` calls with itself when its connection is made)."""

    __slots__ = ("_doomed", "_made", "_server", "limit")

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._made = server.connection_made
        self.limit = limit
        # the transports of connections closed past the cap, each aborted after the grace
        self._doomed: set[asyncio.BaseTransport] = set()
        server.connection_made = self.connection_made  # type: ignore[method-assign]

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        self._made(handler, transport)
        handlers = self._server.connections  # oldest first (insertion order)
        for old in handlers[:max(0, len(handlers) - self.limit)]:
            sock = old.transport  # None once force_close() ran: its abort is due already
            # aiohttp tells no idleness publicly: its own keep-alive check reads the
            # handler's state; a handler without the attribute is closed at once
            busy = getattr(old, "_request_in_progress", False)
            if busy:
                old.close()  # answering: closed once the answer is sent
            else:
                old.force_close()  # idle (or not started): its close() would leave the
                # socket open (the waiting task is cancelled, nothing closes it)
            # an abort due only where the connection may outlive its close (no timer per
            # idle connection a flood of new ones evicts: those end at once)
            if sock is not None and (busy or sock.get_write_buffer_size()) and (
                    sock not in self._doomed):
                self._doomed.add(sock)
                asyncio.get_running_loop().call_later(_EVICTED_GRACE_S, self._abort, sock)

    def _abort(self, transport: asyncio.BaseTransport) -> None:
        """Abort ``transport`` (nothing if its connection has ended: asyncio's and
        uvloop's abort of a lost connection does nothing). Not by ``isinstance``:
        uvloop's ``TCPTransport`` is no ``asyncio.Transport`` subclass."""
        self._doomed.discard(transport)
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()


class _Ping:
    """A callback ``/livez`` sent another event loop: ``sent`` (monotonic seconds) until
    that loop runs :meth:`ran` (in its own thread: one attribute store)."""

    __slots__ = ("sent",)

    def __init__(self, sent: float) -> None:
        self.sent: float | None = sent

    def ran(self) -> None:
        self.sent = None


def _debug_mesh_json(now: float, servers: list[ServerStats],
                     channels: list[ChannelStats]) -> str:
    """The JSON text of ``/debug/mesh`` at ``now`` (Unix seconds) for the snapshots of the
    live ``servers`` and ``channels`` (safe in any thread: the snapshots are the
    caller's own)."""
    body: dict[str, Any] = {
        "time_unix_s": round(now, 3),
        "servers": [s.as_dict() for s in servers],
        "channels": [c.as_dict() for c in channels],
    }
    return json.dumps(body, indent=2, default=repr)


def _not_ready(server: ServerStats | UnreadServer) -> dict[str, Any]:
    """The ``not_ready`` entry of ``/readyz``'s 503 for a live server that is not ready
    (one whose ``stats()`` raised: ``service``, ``instance_id`` and ``error``, the
    exception's class name)."""
    if isinstance(server, UnreadServer):
        return {"service": server.service, "instance_id": server.instance_id,
                "error": server.error}
    return {"service": server.service, "instance_id": server.instance_id,
            "draining": server.draining, "registered": server.registered,
            "serving": server.serving}


def _reason(not_ready: list[dict[str, Any]]) -> str:
    """Why the servers of ``not_ready`` (:func:`_not_ready` entries, at least one) are not
    ready: ``"draining"``, ``"not registered"`` (bound, registration under way), ``"not
    serving"`` (its gRPC health status set NOT_SERVING by the application), ``"stats()
    raised <exception class>"`` (its state could not be read), or those that apply
    joined by ``" or "``, in that order."""
    reasons = {f"stats() raised {entry['error']}" if "error" in entry
               else "draining" if entry["draining"] else "not registered"
               if entry["instance_id"] is None else "not serving" for entry in not_ready}
    order = ["draining", "not registered", "not serving",
             *sorted(r for r in reasons if r.startswith("stats()"))]
    return " or ".join(r for r in order if r in reasons)


def _service_readiness(servers: list[ServerStats | UnreadServer], service: list[str],
                       instance: list[str]) -> tuple[int, dict[str, Any]]:
    """The answer of ``/readyz?service=<service>[&instance=<id>]`` among the live
    ``servers`` of the process: ``(status, JSON body)``.

    Args:
        servers: the live servers (:func:`live_servers`: those whose ``stats()`` raised
            as :class:`UnreadServer`, never ready).
        service: the query's ``service`` values (one non-empty mesh service name wanted).
        instance: the query's ``instance`` values (none, or one non-empty instance id).

    Returns:
        ``(200, {"ready": true, "service", "instances": [sorted ids]})`` when every
        server of ``service`` (with ``instance``: the one registered under that id) is
        ready;
        ``(503, {"ready": false, "service", "not_ready": [...], "reason"})`` while one of
        them drains or is bound but not registered yet (with ``instance``: when no server
        is registered under it but a server of ``service`` is registering, which may be
        it); ``(404, {"ready": false, "service", "reason"})`` when the process has no such
        live server (never started, stopped, or another process's); ``(400, {"error"})``
        for a query without exactly one non-empty ``service`` or with more than one
        (or an empty) ``instance``.
    """
    if len(service) != 1 or not service[0]:
        return 400, {"error": f"readiness of one service wants ?service=<name> once, got "
                              f"service={service!r}"}
    if len(instance) > 1 or instance == [""]:
        return 400, {"error": f"instance=<id> may be given once, got instance={instance!r}"}
    name = service[0]
    mine = sorted((s for s in servers if s.service == name),
                  key=lambda s: s.instance_id or "")
    body: dict[str, Any] = {"ready": False, "service": name}
    if instance:
        body["instance"] = instance[0]
        exact = [s for s in mine if s.instance_id == instance[0]]
        # its registration may be under way: then it is not ready yet, not unknown
        mine = exact or [s for s in mine if s.instance_id is None]
    if not mine:
        body["reason"] = ("no live server of this instance in this process" if instance
                          else "no live server of this service in this process")
        return 404, body
    not_ready = [_not_ready(s) for s in mine if not s.ready]
    if not_ready:
        return 503, {**body, "not_ready": not_ready, "reason": _reason(not_ready)}
    return 200, {"ready": True, "service": name,
                 "instances": [s.instance_id for s in mine]}


def _is_local_host_header(value: str) -> bool:
    """Whether a ``Host`` header value names an IP address (IPv4, or IPv6 bracketed, a
    zone allowed) or ``localhost`` / ``*.localhost`` (RFC 6761; a trailing dot allowed),
    with or without a port: a name a browser cannot have had re-resolved to this machine
    by a page's DNS (rebinding)."""
    match = _HOST_HEADER_RE.fullmatch(value)
    if match is None:
        return False
    host = match.group(1)
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
        else:
            ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


async def _no_store_nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """Headers of the admin server's answers: ``X-Content-Type-Options: nosniff`` on
    each, and ``Cache-Control: no-store`` on the built-in routes' and on every error
    (a 400 quotes its query), unless the handler set its own (an added route's JWKS may
    be cached)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path in _RESERVED or response.status >= 400:
        headers.setdefault("Cache-Control", "no-store")


def _is_ip_literal(host: str) -> bool:
    """Whether ``host`` (an admin host option) is an IP address, not a name."""
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]").partition("%")[0])
    except ValueError:
        return False
    return True


def _all_loopback(addresses: list[Any]) -> bool:
    """Whether every socket address a runner listens on (``runner.addresses``) is a
    loopback address (``127.0.0.0/8``, ``::1``, IPv4-mapped loopback)."""
    out = bool(addresses)
    for sockaddr in addresses:
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        except (ValueError, TypeError, IndexError):
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        out = out and (ip.is_loopback or (mapped is not None and mapped.is_loopback))
    return out


def _same_name(host_header: str, name: str) -> bool:
    """Whether a ``Host`` header value names host ``name`` (any port, any case, a trailing
    dot allowed)."""
    match = _HOST_HEADER_RE.fullmatch(host_header)
    return match is not None and (
        match.group(1).lower().removesuffix(".") == name.lower().removesuffix("."))


class _Collected:
    """Metrics collected already, as a collector for ``generate_latest``."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


# families whose series counted in two registries add up (see AdminServer.add_registry)
_SUMMED_TYPES = frozenset({"counter", "histogram", "gaugehistogram", "summary"})
_SUMMED_GAUGES = frozenset({"grpc_server_in_flight", "grpc_client_in_flight"})


class _Left:
    """A registry that left an admin server's ``/metrics`` (weakly: it may be added again)
    and the families it had counted then (:func:`_monotonic`), pruned to the series the
    served registries list (:func:`_kept`)."""

    __slots__ = ("families", "registry")

    def __init__(self, registry: CollectorRegistry | None, families: list[Metric]) -> None:
        self.registry: Callable[[], CollectorRegistry | None] = (
            _nothing if registry is None else weakref.ref(registry))
        self.families = families


def _nothing() -> None:
    return None


def _folded(left: list[_Left]) -> list[_Left]:
    """``left`` without the entries nothing is left of, and those of registries freed
    (never added again) summed into one: one entry per registry that may come back,
    however many left for good (a server replaced with a registry of its own at every
    reload)."""
    out: list[_Left] = []
    freed: list[Metric] | None = None
    for gone in left:
        if not gone.families:
            continue
        if gone.registry() is not None:
            out.append(gone)
        else:  # a new object: a render under way reads the entries it took as they are
            freed = gone.families if freed is None else _merged(freed, gone.families)
    return out if freed is None else [*out, _Left(None, freed)]


def _monotonic(metric: Metric) -> Metric | None:
    """``metric`` with only its samples that never go down (a counter's, a histogram's,
    a summary's but its quantiles), or ``None`` for a family of another type (a gauge
    may go down: none of it is kept)."""
    if metric.type not in ("counter", "histogram", "summary"):
        return None
    kept = copy.copy(metric)
    kept.samples = [s for s in metric.samples if "quantile" not in s.labels]
    return kept


def _kept(metrics: list[Metric], left: list[Metric]) -> tuple[list[Metric], list[Metric]]:
    """``metrics`` with the samples of ``left`` (a registry's that left) added to the
    series they list (``_created`` the earliest), and what of ``left`` is still listed
    (the rest is dropped: a series that left does not come back with old counts); the
    families of ``metrics`` are left as they are (a changed one is a copy)."""
    out = list(metrics)
    where = {m.name: i for i, m in enumerate(out)}
    still: list[Metric] = []
    for metric in left:
        i = where.get(metric.name)
        if i is None or out[i].type != metric.type:
            continue
        merged = copy.copy(out[i])
        merged.samples = list(out[i].samples)
        series = {(s.name, tuple(sorted(s.labels.items()))): j
                  for j, s in enumerate(merged.samples)}
        kept = copy.copy(metric)
        kept.samples = []
        other_bounds = _other_bounds(out[i], metric)
        for sample in metric.samples:
            j = series.get((sample.name, tuple(sorted(sample.labels.items()))))
            if j is None or (other_bounds and _histogram_series(sample) in other_bounds):
                continue
            had = merged.samples[j]
            merged.samples[j] = had._replace(
                value=min(had.value, sample.value) if sample.name.endswith("_created")
                else had.value + sample.value)
            kept.samples.append(sample)
        if kept.samples:
            out[i] = merged
            still.append(kept)
    return out, still


_Labels = tuple[tuple[str, str], ...]


def _histogram_series(sample: Sample) -> _Labels:
    """The labels of the histogram series ``sample`` belongs to (``le`` aside)."""
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))


def _bounds(metric: Metric) -> dict[_Labels, set[str]]:
    """The ``le`` bounds of each series of a histogram family (none of another type)."""
    out: dict[_Labels, set[str]] = {}
    if metric.type in ("histogram", "gaugehistogram"):
        for sample in metric.samples:
            if sample.name == f"{metric.name}_bucket" and "le" in sample.labels:
                out.setdefault(_histogram_series(sample), set()).add(sample.labels["le"])
    return out


def _other_bounds(first: Metric, metric: Metric) -> set[_Labels]:
    """The histogram series that ``first`` and ``metric`` (two registries' families of
    one name and type) both have with different bucket bounds (``RpcMetrics`` of custom
    ``buckets_s`` in one): adding them bucket by bucket would make a series that is not
    cumulative, its buckets out of order (the OpenMetrics parser refuses it)."""
    if metric.type not in ("histogram", "gaugehistogram"):
        return set()
    mine = _bounds(first)
    return {key for key, les in _bounds(metric).items()
            if key in mine and mine[key] != les}


def _merged(metrics: list[Metric], more: Iterable[Metric]) -> list[Metric]:
    """``metrics`` (the families of the registries collected so far) with ``more`` (those
    of one more registry) merged in, as :meth:`AdminServer.add_registry` says; the
    collectors' own family objects are left as they are (a merged family is a copy)."""
    out = list(metrics)
    where = {m.name: i for i, m in enumerate(out)}
    for metric in more:
        i = where.get(metric.name)
        if i is None:
            where[metric.name] = len(out)
            out.append(metric)
            continue
        first = out[i]
        if first.type != metric.type:
            continue  # an exposition names a family once, with one type
        summed = first.type in _SUMMED_TYPES or first.name in _SUMMED_GAUGES
        merged = copy.copy(first)
        merged.samples = list(first.samples)
        series = {(s.name, tuple(sorted(s.labels.items()))): j
                  for j, s in enumerate(merged.samples)}
        other_bounds = _other_bounds(first, metric)
        for sample in metric.samples:
            if other_bounds and _histogram_series(sample) in other_bounds:
                continue  # its buckets are not the first's: not added bucket by bucket
            key = (sample.name, tuple(sorted(sample.labels.items())))
            j = series.get(key)
            if j is None:
                series[key] = len(merged.samples)
                merged.samples.append(sample)
            elif summed and "quantile" not in sample.labels:
                had = merged.samples[j]
                merged.samples[j] = had._replace(
                    value=min(had.value, sample.value) if sample.name.endswith("_created")
                    else had.value + sample.value)
        out[i] = merged
    return out


def _restricted(metric: Metric, names: frozenset[str]) -> Metric | None:
    """``metric`` with only its samples named in ``names`` (a copy), or ``None`` when it
    has none: what prometheus_client's ``Metric._restricted_metric`` does for its
    ``RestrictedRegistry`` (its ``/metrics?name[]=`` filter), type and unit kept."""
    samples = [s for s in metric.samples if s.name in names]
    if not samples:
        return None
    kept = copy.copy(metric)
    kept.samples = samples
    return kept


def _utf8(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a pair of surrogates is
    joined into its character), so that it encodes as UTF-8."""
    if text.isascii():
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _utf8_labels(labels: dict[str, str]) -> dict[str, str]:
    return {_utf8(k): _utf8(v) for k, v in labels.items()}


def _utf8_metric(metric: Metric) -> Metric:
    """``metric`` itself if all its text encodes as UTF-8, else a copy in which the lone
    surrogates of its help text, names, label names and values (its exemplars' too) are
    replaced (:func:`_utf8`); the collector's own object is left as it is."""
    def encodable(text: str) -> bool:
        return _utf8(text) == text

    if encodable(metric.documentation) and encodable(metric.name) and all(
            encodable(s.name) and all(encodable(k) and encodable(v)
                                      for k, v in s.labels.items())
            and (s.exemplar is None or all(encodable(k) and encodable(v)
                                           for k, v in s.exemplar.labels.items()))
            for s in metric.samples):
        return metric
    fixed = copy.copy(metric)
    fixed.name = _utf8(metric.name)
    fixed.documentation = _utf8(metric.documentation)
    fixed.samples = [s._replace(
        name=_utf8(s.name), labels=_utf8_labels(s.labels),
        exemplar=None if s.exemplar is None else s.exemplar._replace(
            labels=_utf8_labels(s.exemplar.labels)))
        for s in metric.samples]
    return fixed


def _weighted(header: str) -> list[tuple[str, float]]:
    """The items of an ``Accept`` or ``Accept-Encoding`` header with their weights (RFC
    9110 12.4.2): ``[(lower-cased media type or coding, q)]``, ``q`` 1.0 when not given;
    a value may be quoted; a malformed or out-of-range weight (NaN too) counts as 0."""
    items = []
    for part in header.split(","):
        item, *params = part.split(";")
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip().strip('"'))
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # NaN too
                    q = 0.0
        items.append((item.strip().lower(), q))
    return items


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts ``gzip`` (RFC 9110 12.5.3): named as
    ``gzip`` or ``x-gzip`` with a weight above 0, or, not named, ``*`` with one (codings
    compare case-insensitively; a malformed weight counts as 0)."""
    named: float | None = None
    star: float | None = None
    for kind, q in _weighted(accept_encoding):
        if kind in ("gzip", "x-gzip"):
            named = q if named is None else max(named, q)
        elif kind == "*":
            star = q if star is None else max(star, q)
    best = named if named is not None else star
    return best is not None and best > 0.0


def _range_weight(items: list[tuple[str, float]], kind: str) -> tuple[float, int]:
    """The weight ``items`` (:func:`_weighted`) give media type ``kind`` (lower case)
    by its most specific matching range (RFC 9110 12.5.1: ``type/subtype`` over
    ``type/*`` over ``*/*``; the highest of several of one precision, as Prometheus
    lists its OpenMetrics versions apart): ``(q, precision)``, precision 2 for the type
    named, 1 for ``type/*``, 0 for ``*/*``; ``(-1.0, -1)`` when no range matches."""
    major = kind.partition("/")[0] + "/*"
    best = (-1.0, -1)
    for item, q in items:
        precision = 2 if item == kind else 1 if item == major else 0 if item == "*/*" else -1
        if precision > best[1] or (precision == best[1] and precision >= 0 and q > best[0]):
            best = (q, precision)
    return best


def _wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header prefers the OpenMetrics text format to Prometheus'
    text format 0.0.4: the weight of ``application/openmetrics-text`` is above 0 and
    above that of ``text/plain``, or equal to it and given by a range that names it
    (``application/openmetrics-text`` or ``application/*``: a tie of ``*/*`` alone, curl's
    default, is the text format), each weight taken from the most specific range
    matching it (RFC 9110 12.5.1: ``text/plain;q=0, */*`` refuses the text format,
    which ``*/*`` does not take back; media types compare case-insensitively, a
    parameter value may be quoted, ``q=0`` means not acceptable; a malformed weight
    counts as 0). A header prometheus_client's own ``choose_encoder`` raises on (a
    quoted ``version``) or reads wrongly (``q=0``) is answered here, never with a
    500."""
    items = _weighted(accept)
    om, om_precision = _range_weight(items, "application/openmetrics-text")
    text, _ = _range_weight(items, "text/plain")
    return om > 0.0 and (om > text or (om == text and om_precision > 0))
