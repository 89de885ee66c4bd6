"""serve(): a grpc.aio server that joins the mesh and leaves it cleanly.

:class:`MeshServer` starts a ``grpc.aio`` server with the standard health service
(``grpc.health.v1``) and server reflection, registers the instance in the registry once it
is SERVING, and drains on SIGTERM/SIGINT in the order a mesh needs so no caller sees an
error:

1. health ``NOT_SERVING`` for every service and deregistration, so balancers stop picking
   this instance (they see it within their watch interval);
2. wait ``drain_delay_s`` for that news to reach callers, still serving;
3. refuse mesh clients' new calls of unary-response methods
   (``UNAVAILABLE`` with the nack trailer ``meshkit-nack: 1``, before any code of them
   runs: mesh clients retry them on another endpoint whatever the method; their
   streaming-response calls, which they would not retry, are served) until they stop
   arriving (0.05 s without one, 0.5 s at most), so that no call is waiting in grpc when
   it stops: grpc core ends those
   ``CANCELLED``, which no client retries. Other gRPC clients' calls are served (a
   client that does not read the nack would see each refusal as a failed call);
4. stop taking new calls (grpc's GOAWAY: other clients move to other addresses), end the
   health ``Watch`` streams (``OK``, once each watcher has been sent ``NOT_SERVING``;
   only now, or a client with client-side health checking, gRFC A17, re-opens its
   ``Watch`` at once, in a loop) and give in-flight calls ``grace_s`` to finish;
5. return, so the process exits 0.

The health service is meshkit's own ``grpc_health.v1.health.aio.HealthServicer`` (with
gRFC A90's ``List`` added: :class:`_MeshHealthServicer`) unless
the servicers include one of yours (``(health_pb2_grpc.add_HealthServicer_to_server,
yours)``): that one is served instead and driven the same way (see :class:`MeshServer`).

**The server chain** is built here and only here, in one fixed order, from the options:

1. telemetry (``telemetry``): spans, RED metrics, access log; outermost, so every refusal
   below is traced, counted and logged;
2. deadline admission and propagation (``deadline``, on by default): expired calls are
   refused before any other work;
3. authentication and authorization (``auth``): peer identity (mTLS; on by default with
   ``tls``), JWT, policy;
4. rate limiting (``rate_limit``): after auth, so the limit keys on a verified identity
   and unauthenticated callers consume no one's budget;
5. the answer to an unhandled exception: ``UNKNOWN`` naming the exception's type, its
   text only in the server's log (a downstream call's ``UNAVAILABLE`` or
   ``RESOURCE_EXHAUSTED`` that escaped the handler: ``RESOURCE_EXHAUSTED`` with the
   trailer ``meshkit-downstream-status``, :func:`meshkit._unhandled.downstream_refusal`); a unary
   handler's ``None`` gets ``INTERNAL``; with
   ``expose_exception_text`` both are grpc.aio's, but for a handler's
   ``PermissionDeniedError``/``UnauthenticatedError``, which get their status in both
   modes (:mod:`meshkit._unhandled`);
6. your own ``grpc.aio.ServerInterceptor`` s (``interceptors``), first outermost;
7. the handler.

Adjacent meshkit checks (1-5: telemetry is their reporter) are fused into one interceptor
and one handler wrap (:class:`meshkit._handlers.FusedInterceptor`). Outside them all, the
request gate (``limits``, :class:`meshkit._limits.RequestGate`) reads unary requests; it is
folded into that interceptor when the fused checks come first, so a default server runs
one interceptor per call. meshkit's own check interceptors are refused
in ``interceptors`` (``ConfigError`` naming the option to use), so the order cannot be
written twice. Example::

    async def main() -> None:
        await meshkit.serve("userd", [(add_UserServiceServicer_to_server, UserServicer())])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import structlog
from cryptography import x509
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from meshkit._aio_http import _NOT_HERE, _addresses, _is_ip
from meshkit._config import (
    check_bool,
    check_compression,
    check_grpc_options,
    check_instance,
    check_int,
    check_number,
    check_secret_holder,
    check_string_map,
    check_strings,
    check_tuple,
    registry_argument,
)
from meshkit._env import CERT_DIR, env_value
from meshkit._fields import Normalised
from meshkit._handlers import (
    HANDLER_EXECUTOR,
    Handler,
    Resolver,
    WrappingInterceptor,
    fold_outermost,
    fuse_interceptors,
    handler_resolver,
    off_loop_outermost,
    unknown_methods_handler,
)
from meshkit._hosts import bare_host, check_host, is_loopback, is_unspecified, uri_host
from meshkit._limits import (
    _HEALTH_REQUEST_BYTES,
    CallSlots,
    RequestGate,
    ServerLimits,
    guard_generic_handler,
    guard_method_handler,
)
from meshkit._log import context_without_meshkit
from meshkit._metadata import MESH_USER_AGENT
from meshkit._methods import MethodMatcher, check_served
from meshkit._registration import grpc_observability_active
from meshkit._signals import unblock_signals
from meshkit._stats import ServerStats
from meshkit._tasks import cancel_and_wait
from meshkit._threads import HandlerThreads
from meshkit._unhandled import UnhandledErrorInterceptor
from meshkit.auth import (
    AuthOptions,
    TLSMaterial,
    TLSOptions,
    check_server_identity,
    describe_certificate,
    tls_from_dir,
)
from meshkit.auth._tls import check_renewal, stat_files
from meshkit.discovery import Instance, Registry, registry_from_env
from meshkit.errors import ConfigError
from meshkit.observability import (
    AdminOptions,
    AdminServer,
    TelemetryOptions,
    TelemetryServerInterceptor,
    default_registry,
    ended,
    flush_logs,
    server_interceptors,
    tracing_from_env,
    track,
)
from meshkit.observability._metrics import publish_certificate
from meshkit.resilience import (
    DeadlineInterceptor,
    DeadlineOptions,
    RateLimitInterceptor,
    RateLimitOptions,
    StorageLimiter,
)
from meshkit.resilience._retry import DRAINING_DETAILS, NACK_METADATA

__all__ = ["MeshServer", "ServeOptions", "ServerLimits", "serve", "server_chain"]

_log = structlog.get_logger("meshkit.server")

_ID_MAX = 128  # the registry's longest instance id (Instance)
_ID_HASH_LEN = 8  # hex digits of the host name's hash in a shortened default id


def _default_instance_id(service: str, hostname: str, rest: str) -> str:
    """``<service>-<hostname><rest>`` (``rest``: ``-<pid>``, maybe ``-<port>[-<n>]``), or,
    when that is longer than the registry takes (128 characters), the host name cut
    short and followed by ``-`` and 8 hex digits of its SHA-256, so the id stays
    deterministic and distinct for two hosts sharing a long prefix:
    ``<service>-<hostname prefix>-<hash><rest>`` (the host name dropped, the hash kept,
    if even that does not fit)."""
    ident = f"{service}-{hostname}{rest}"
    if len(ident) <= _ID_MAX:
        return ident
    digest = hashlib.sha256(hostname.encode("utf-8", "surrogatepass")).hexdigest()
    digest = digest[:_ID_HASH_LEN]
    room = _ID_MAX - len(service) - len(rest) - len(digest) - 2  # the two '-'
    head = hostname[:room].rstrip("-.") if room > 0 else ""
    return f"{service}-{head}-{digest}{rest}" if head else f"{service}-{digest}{rest}"

_SignalHandler = Callable[[int, Any], Any] | int | signal.Handlers | None
_SignalListener = Callable[[signal.Signals], None]


class _SignalFanout:
    """One event loop's handler for one signal, shared by every
    :meth:`MeshServer.run_until_signal` (and ``serve()``) of that loop: the loop keeps one
    handler per signal (``loop.add_signal_handler`` replaces the one before), so each
    server adds a listener here instead, and the signal wakes every one of them.
    Installed with the first listener (:func:`_listen_for_signal`), removed with the last
    (:func:`_stop_listening`), which gives the signal its handler from before back.

    ``previous``: ``{signal: its handler before}`` (one entry), what a forked child gets
    back (:func:`_undo_signal_handlers_in_child`); ``blocked``: whether the signal was in
    the thread's signal mask before (unblocked while the handler is installed, blocked
    again when it is removed); ``loop_callback``: the callback and
    arguments another ``loop.add_signal_handler`` had given the loop for the signal
    (asyncio's loop, which keeps them in ``_signal_handlers``; ``None`` for none, or on
    uvloop, whose handlers cannot be read); ``listeners``: an ordered set, woken in the
    order the servers started listening."""

    __slots__ = ("blocked", "listeners", "loop_callback", "previous", "sig")

    def __init__(self, sig: signal.Signals, loop: asyncio.AbstractEventLoop) -> None:
        self.sig = sig
        self.previous: dict[signal.Signals, _SignalHandler] = {sig: signal.getsignal(sig)}
        # whether the mask this process inherited blocked it (unblocked while installed)
        self.blocked = sig in _blocked_signals()
        self.loop_callback: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        handlers = getattr(loop, "_signal_handlers", None)
        handle = handlers.get(sig) if isinstance(handlers, dict) else None
        callback = getattr(handle, "_callback", None)
        if callable(callback) and not getattr(handle, "_cancelled", True):
            self.loop_callback = (callback, tuple(getattr(handle, "_args", None) or ()))
        self.listeners: dict[_SignalListener, None] = {}

    def dispatch(self) -> None:
        """The loop's handler: wake every listener (one that raises is logged and the
        others are still woken)."""
        for listener in list(self.listeners):
            try:
                listener(self.sig)
            except Exception:
                _log.exception("signal listener failed", signal=self.sig.name)


_fanouts: dict[tuple[asyncio.AbstractEventLoop, signal.Signals], _SignalFanout] = {}
"""The signal handlers installed by :meth:`MeshServer.run_until_signal`, by event loop
and signal, oldest first (only ever in the main thread: signals reach it only)."""


def _listen_for_signal(loop: asyncio.AbstractEventLoop, sig: signal.Signals,
                       listener: _SignalListener) -> None:
    """Call ``listener(sig)`` from ``loop`` when ``sig`` arrives, beside every other
    listener of the loop (main thread only). The first listener of a loop and signal
    installs its handler (``loop.add_signal_handler``), replacing the one before it,
    which :func:`_stop_listening` gives back, and unblocks the signal when the signal
    mask the process inherited blocked it (:func:`meshkit._signals.unblock_signals`, as
    Go's ``signal.Notify``): a handler of a blocked signal never runs.

    Raises:
        ValueError, RuntimeError, OSError: as ``loop.add_signal_handler`` (not the main
            thread, a signal that cannot be caught); nothing is installed then.
    """
    key = (loop, sig)
    fanout = _fanouts.get(key)
    if fanout is None:
        fanout = _SignalFanout(sig, loop)
        loop.add_signal_handler(sig, fanout.dispatch)
        _fanouts[key] = fanout
        if fanout.blocked:
            unblock_signals((sig,))
    fanout.listeners[listener] = None


def _stop_listening(loop: asyncio.AbstractEventLoop, sig: signal.Signals,
                    listener: _SignalListener) -> None:
    """Undo :func:`_listen_for_signal`. The last listener of a loop and signal removes
    its handler and gives the signal back the handler it had before: a Python handler
    (the application's own, ``SIG_IGN``, ``asyncio.run``'s for SIGINT), or the callback
    of the application's own ``loop.add_signal_handler`` on asyncio's loop. On uvloop,
    whose loop handlers cannot be read, such a callback is not given back: the loop's
    default stays (``SIG_DFL``; ``default_int_handler`` for SIGINT). Never raises."""
    key = (loop, sig)
    fanout = _fanouts.get(key)
    if fanout is None:  # a forked child's copy of its parent's, or never installed
        return
    fanout.listeners.pop(listener, None)
    if fanout.listeners:
        return
    del _fanouts[key]
    with contextlib.suppress(Exception):
        loop.remove_signal_handler(sig)
    if fanout.blocked:  # the mask as it was (a signal that came meanwhile stays pending)
        _block_signal(sig)
    if fanout.loop_callback is not None and not loop.is_closed():
        callback, args = fanout.loop_callback
        with contextlib.suppress(Exception):
            loop.add_signal_handler(sig, callback, *args)
            return
    before = fanout.previous[sig]
    if before is not None and not _loop_placeholder(before):
        with contextlib.suppress(OSError, ValueError, TypeError):
            signal.signal(sig, before)


def _blocked_signals() -> set[signal.Signals]:
    """The calling thread's signal mask (empty where there is none, e.g. Windows)."""
    sigmask = getattr(signal, "pthread_sigmask", None)
    if sigmask is None:
        return set()
    with contextlib.suppress(OSError, ValueError):
        return set(sigmask(signal.SIG_BLOCK, ()))
    return set()


def _block_signal(sig: signal.Signals) -> None:
    """Put ``sig`` back in the calling thread's signal mask (never raises)."""
    sigmask = getattr(signal, "pthread_sigmask", None)
    if sigmask is not None:
        with contextlib.suppress(OSError, ValueError):
            sigmask(signal.SIG_BLOCK, {sig})


def _loop_placeholder(handler: _SignalHandler) -> bool:
    """Whether ``handler`` is the Python-level handler an event loop installs for its
    ``add_signal_handler`` (asyncio's ``_sighandler_noop``, a bound method of uvloop's
    loop): it only wakes that loop, whose own callback for the signal is elsewhere."""
    return (isinstance(getattr(handler, "__self__", None), asyncio.AbstractEventLoop)
            or getattr(handler, "__module__", None) == "asyncio.unix_events")


_fork_blocked: dict[int, frozenset[signal.Signals]] = {}
"""The signals :func:`_block_handled_signals_for_fork` added to a forking thread's mask,
by thread id (``threading.get_ident()``, the same in the child), until the fork is over."""


def _block_handled_signals_for_fork() -> None:
    """Before a fork while ``serve()`` / ``run_until_signal()`` has its handlers installed,
    block their signals in the forking thread (the child inherits its mask), so a signal
    to the child in the instant between ``fork()`` and
    :func:`_undo_signal_handlers_in_child` stays pending instead of being run by the
    handler the child inherited, which writes the signal number into the wakeup fd the
    child shares with its parent's loop (the parent drained, the child ran on). Unblocked
    by :func:`_unblock_after_fork_in_parent` and, after the reset, in the child. Run by
    ``os.register_at_fork(before=...)``; nothing without handlers installed; never
    raises."""
    if not _fanouts:
        return
    sigmask = getattr(signal, "pthread_sigmask", None)
    if sigmask is None:
        return
    handled = {sig for _loop, sig in list(_fanouts)}
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        added = frozenset(handled - set(sigmask(signal.SIG_BLOCK, handled)))
        if added:
            _fork_blocked[threading.get_ident()] = added


def _unblock_after_fork_in_parent() -> None:
    """The parent's side of :func:`_block_handled_signals_for_fork`: the forking thread's
    mask as it was (a signal that came during the fork is delivered now, to the parent's
    handlers). Run by ``os.register_at_fork(after_in_parent=...)``; never raises."""
    added = _fork_blocked.pop(threading.get_ident(), None)
    if added:
        with contextlib.suppress(OSError, ValueError):
            unblock_signals(added)


def _undo_signal_handlers_in_child() -> None:
    """In a child forked while ``serve()`` / ``run_until_signal()`` had its handlers
    installed (a ``multiprocessing`` or ``ProcessPoolExecutor`` worker, a pre-fork
    worker): give the signals their handlers from before (a signal to the child is then
    the child's, e.g. SIGTERM kills it) and drop the event loop's wakeup fd, a socket the
    child shares with its parent's loop (a signal the child got would be run by the
    parent's loop: the parent would drain). Then unblock the signals
    :func:`_block_handled_signals_for_fork` blocked across the fork (those the reset
    blocks again, blocked in the mask the process had before ``serve()``, stay blocked):
    one that came since the fork is delivered now, to the child's own handlers. Without
    handlers installed this does nothing. Run by
    ``os.register_at_fork(after_in_child=...)``."""
    added = _fork_blocked.pop(threading.get_ident(), None)
    _fork_blocked.clear()  # other threads of the parent: none in the child
    if _fanouts:
        for fanout in reversed(list(_fanouts.values())):  # the oldest's handlers last
            for sig, handler in fanout.previous.items():
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(sig, signal.SIG_DFL if handler is None else handler)
                if fanout.blocked:
                    _block_signal(sig)
                    if added:
                        added -= {sig}
        _fanouts.clear()  # the parent's servers: the child's own install anew
        with contextlib.suppress(OSError, ValueError):
            signal.set_wakeup_fd(-1)
    if added:
        with contextlib.suppress(OSError, ValueError):
            unblock_signals(added)


os.register_at_fork(before=_block_handled_signals_for_fork,
                    after_in_parent=_unblock_after_fork_in_parent,
                    after_in_child=_undo_signal_handlers_in_child)

class _AdminSlot:
    """The shared admin server of one event loop, its user count and its lock;
    ``borrowed``: the process's ephemeral-port admin server of another loop that this
    loop's users use instead (:class:`_Borrowed`)."""

    __slots__ = ("borrowed", "lock", "server", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.server: AdminServer | None = None
        self.users = 0
        self.borrowed: _Borrowed | None = None


class _Borrowed:
    """The process's admin server on an ephemeral port (``AdminOptions.port`` 0), served
    by the event loop ``loop`` and used by the servers of other loops too (guarded by
    ``_SharedAdmin._fixed_lock``): ``borrowers`` counts their users per loop,
    ``registries`` lists every user's registry (repeats kept), for a server that takes
    it over."""

    __slots__ = ("borrowers", "loop", "options", "registries", "server")

    def __init__(self, server: AdminServer, loop: asyncio.AbstractEventLoop,
                 options: AdminOptions) -> None:
        self.server = server
        self.loop = loop
        self.options = options
        self.borrowers: dict[asyncio.AbstractEventLoop, int] = {}
        self.registries: list[CollectorRegistry] = []


#: A count on a borrowed admin server: it, and its loop and server read with the count.
_Lease = tuple[_Borrowed, asyncio.AbstractEventLoop, AdminServer]

#: The tasks moving the admin server to another loop: referenced until they end.
_moves: set[asyncio.Task[None]] = set()


async def _in_loop(loop: asyncio.AbstractEventLoop, call: Callable[..., object],
                   *args: Any) -> None:
    """``call(*args)`` in ``loop`` (another thread's), awaited up to 10 s; nothing when
    that loop is closed."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            call(*args)
        except BaseException as exc:  # handed to the waiter
            done.set_exception(exc)
        else:
            done.set_result(None)

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # closed
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.wrap_future(done), 10)


class _SharedAdmin:
    """The process's admin server, shared by every MeshServer that asks for one.

    An asyncio lock and an aiohttp server belong to one event loop, so the servers of one
    loop share one admin server, started with the first of them and stopped with the last
    (their loop's slot is dropped then: it holds a lock bound to the loop, which a slot
    kept would keep alive).

    Servers of another loop (a thread's own loop) use the same admin server too: one per
    process, so a Prometheus scraping every announced ``admin_port`` counts no series
    twice (each loop's own admin server served the same process-wide registry, and each
    server announced its own port). On an ephemeral port (``AdminOptions.port`` 0, the
    default), a loop without one borrows the running admin server of another loop started
    with equal options, announces its port and has its registry served there
    (:class:`_Borrowed`; registries are added and removed in the admin server's loop).
    When the loop serving it loses its last server (its loop ending) while servers of
    other loops still use it, it moves: it is stopped there and started again, on the same
    port, in the loop of one of those (a warning if that port was taken meanwhile: those
    servers then serve without one); a loop that has ended no longer lends it. A forked
    child starts its own (the parent's loops are not in the child).
    Limits: while it moves, scrapes are refused (the port is free between its stop and
    its start); a borrower's ``MeshServer.admin`` stays the :class:`AdminServer` it
    borrowed (after a move: the stopped one, of the same ``url`` and ``port``); a loop
    closed with servers never stopped (``loop.close()`` with no ``asyncio.run``
    shutdown) does not hand it over, and the loops that borrowed it keep announcing
    its port (their next servers too) until their own servers have all stopped; a
    borrower's start and stop wait up to 10 s each for a busy serving loop to add or
    remove its registry.
    A fixed port (``MESHKIT_ADMIN_PORT``, ``AdminOptions.port``) held by the admin server
    of another loop still running is not bound again (it would fail ``EADDRINUSE``): the
    process has its admin server there, which serves every server's ``/readyz`` and
    ``/debug/mesh``, and the servers of this loop serve without one (a warning, no
    ``admin_port`` announced).

    Its ``/metrics`` serves the registry of its options (default: the process's
    :func:`~meshkit.observability.default_registry`) and the registry each of its users
    counts into (``TelemetryOptions.registry``), each while a user counts there
    (:meth:`AdminServer.add_registry`: one exposition, nothing counted twice); which
    series a scrape sees does not depend on which server started first. Its dashboard
    shows the RPC records of the first user's registry, and once that registry leaves (its
    server stopped) those of the first registry still served, or the admin server's own.
    """

    _slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AdminSlot] = \
        weakref.WeakKeyDictionary()
    # fixed admin ports of this process: port -> the loop whose admin server holds it
    _fixed: dict[int, weakref.ref[asyncio.AbstractEventLoop]] = {}
    _fixed_lock = threading.Lock()
    # the ephemeral-port admin server other loops borrow (one per process)
    _lent: _Borrowed | None = None
    # the loop starting it, and what tells the others it has
    _starting: tuple[asyncio.AbstractEventLoop, concurrent.futures.Future[None]] | None = None

    @classmethod
    def users(cls) -> int:
        """How many servers of the running loop hold its admin server."""
        slot = cls._slots.get(asyncio.get_running_loop())
        return 0 if slot is None else slot.users

    @classmethod
    def _borrow(cls, options: AdminOptions, loop: asyncio.AbstractEventLoop,
                registry: CollectorRegistry | None) -> _Lease | None:
        """Count one user of ``loop`` on the process's ephemeral-port admin server of
        another running loop started with ``options``, if there is one."""
        if options.port != 0:
            return None
        with cls._fixed_lock:
            lent = cls._lent
            if (lent is None or lent.loop is loop or lent.options != options
                    or lent.loop.is_closed() or not lent.loop.is_running()):
                return None
            return cls._count(lent, loop, registry)

    @classmethod
    def _count(cls, lent: _Borrowed, loop: asyncio.AbstractEventLoop,
               registry: CollectorRegistry | None) -> _Lease:
        """Count one user of ``loop`` on ``lent`` (``_fixed_lock`` held): its loop and
        server read with the count, so that a move (:meth:`_take_over`, which lists
        the registries once it has swapped the server in) either lists ``registry`` or
        is the server ``registry`` is added to."""
        lent.borrowers[loop] = lent.borrowers.get(loop, 0) + 1
        if registry is not None:
            lent.registries.append(registry)
        return lent, lent.loop, lent.server

    @classmethod
    def _uncount(cls, lent: _Borrowed, loop: asyncio.AbstractEventLoop,
                 registry: CollectorRegistry | None) -> tuple[asyncio.AbstractEventLoop,
                                                              AdminServer]:
        """Undo one :meth:`_count` (``_fixed_lock`` not held): the loop and server to
        remove ``registry`` from, read with it."""
        with cls._fixed_lock:
            left = lent.borrowers.get(loop, 0) - 1
            if left > 0:
                lent.borrowers[loop] = left
            else:
                lent.borrowers.pop(loop, None)
            if registry is not None and registry in lent.registries:
                lent.registries.remove(registry)
            return lent.loop, lent.server

    @classmethod
    async def _borrow_or_claim(cls, options: AdminOptions, loop: asyncio.AbstractEventLoop,
                               registry: CollectorRegistry | None) -> _Lease | None:
        """:meth:`_borrow`, waiting (30 s at most) while another loop, running, starts the
        process's ephemeral-port admin server; ``None``: this loop starts it (claimed:
        :meth:`_started` ends the claim)."""
        if options.port != 0:
            return None
        deadline = time.monotonic() + 30.0
        while True:
            lent = cls._borrow(options, loop, registry)
            if lent is not None:
                return lent
            with cls._fixed_lock:
                starting = cls._starting
                # a loop not running (stopped mid-start, or closed) starts nothing
                if starting is None or starting[0] is loop or starting[1].done() \
                        or not starting[0].is_running() or time.monotonic() >= deadline:
                    cls._starting = (loop, concurrent.futures.Future())
                    return None
            with contextlib.suppress(TimeoutError):  # looked at again each second
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(starting[1])),
                                       min(1.0, max(0.0, deadline - time.monotonic())))

    @classmethod
    def _started(cls, loop: asyncio.AbstractEventLoop, server: AdminServer | None,
                 options: AdminOptions) -> None:
        """``loop`` started its admin server (``None``: failed to): lend it to other
        loops (ephemeral port) and end ``loop``'s claim (:meth:`_borrow_or_claim`)."""
        if options.port != 0:
            return
        with cls._fixed_lock:
            if server is not None and (cls._lent is None or cls._lent.loop.is_closed()):
                cls._lent = _Borrowed(server, loop, options)
            starting = cls._starting
            if starting is not None and starting[0] is loop:
                cls._starting = None
                starting[1].set_result(None)

    @classmethod
    async def acquire(cls, options: AdminOptions,
                      registry: CollectorRegistry | None = None) -> AdminServer | None:
        """The process's admin server (the running loop's, started if neither it nor
        another running loop has one), serving ``registry`` (where the user's metrics go)
        at ``/metrics`` until :meth:`release`; ``None`` when ``options.port`` is fixed and
        held by the admin server of another loop of this process (warned).

        Raises:
            OSError: the admin server's address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        while True:
            slot = cls._slots.get(loop)
            if slot is None:
                slot = cls._slots[loop] = _AdminSlot()
            async with slot.lock:
                if cls._slots.get(loop) is not slot:
                    continue  # its last user released and dropped it while we waited
                try:
                    if slot.server is None:
                        lease: _Lease | None
                        if slot.borrowed is not None:
                            with cls._fixed_lock:
                                lease = cls._count(slot.borrowed, loop, registry)
                        else:
                            lease = await cls._borrow_or_claim(options, loop, registry)
                        if lease is not None:
                            lent, host, served = lease
                            slot.borrowed = lent
                            slot.users += 1
                            if registry is not None:
                                try:
                                    await _in_loop(host, served.add_registry, registry)
                                except BaseException:  # not a user: uncounted
                                    slot.users -= 1
                                    cls._uncount(lent, loop, registry)
                                    raise
                            return lent.server
                        if not cls._reserve(options.port, loop):
                            _log.warning("admin port held by the admin server of another "
                                         "event loop of this process; serving without an "
                                         "admin server", admin_port=options.port)
                            return None
                        try:  # a claim (ephemeral port) ends however this ends
                            server = AdminServer(options, dashboard_registry=registry)
                            await _in_a_context_of_its_own(server.start(),
                                                           "meshkit-admin-start")
                        except BaseException:
                            cls._unreserve(options.port, loop)
                            cls._started(loop, None, options)
                            raise
                        slot.server = server
                        cls._started(loop, server, options)
                        _log.info("admin server", url=server.url)
                    slot.users += 1
                    if registry is not None:
                        slot.server.add_registry(registry)
                        with cls._fixed_lock:
                            if cls._lent is not None and cls._lent.server is slot.server:
                                cls._lent.registries.append(registry)
                    return slot.server
                finally:
                    if slot.users == 0:
                        del cls._slots[loop]

    @classmethod
    async def release(cls, registry: CollectorRegistry | None = None) -> None:
        """One user of the running loop's admin server is gone (its ``registry``, as
        given to :meth:`acquire`, leaves ``/metrics`` unless another user counts there);
        the last stops it (or moves it to another loop still using it)."""
        loop = asyncio.get_running_loop()
        slot = cls._slots.get(loop)
        if slot is None:
            return
        async with slot.lock:
            slot.users -= 1
            lent = slot.borrowed
            if lent is not None:
                host, served = cls._uncount(lent, loop, registry)
                if registry is not None:
                    await _in_loop(host, served.remove_registry, registry)
                if slot.users <= 0 and cls._slots.get(loop) is slot:
                    del cls._slots[loop]
                return
            with cls._fixed_lock:
                lent = cls._lent if cls._lent is not None and \
                    cls._lent.server is slot.server else None
                if lent is not None and registry is not None and registry in lent.registries:
                    lent.registries.remove(registry)
            if slot.users > 0:
                if registry is not None and slot.server is not None:
                    slot.server.remove_registry(registry)
                return
            server, slot.server = slot.server, None
            if cls._slots.get(loop) is slot:
                del cls._slots[loop]
            if server is not None:
                port = server.port
                try:
                    await server.stop()
                finally:
                    cls._unreserve(server.options.port, loop)
                    if lent is not None:
                        cls._hand_over(lent, port)

    @classmethod
    def _hand_over(cls, lent: _Borrowed, port: int) -> None:
        """``lent``'s loop lost its last server: start it again on ``port`` in the loop
        of a borrower still running, or forget it when there is none."""
        with cls._fixed_lock:
            heirs = [h for h in lent.borrowers if not h.is_closed()]
            if cls._lent is not lent:
                return
            for heir in heirs:
                try:
                    heir.call_soon_threadsafe(cls._start_take_over, heir, lent, port)
                except RuntimeError:  # closed meanwhile
                    lent.borrowers.pop(heir, None)
                    continue
                lent.loop = heir
                return
            cls._lent = None

    @classmethod
    def _start_take_over(cls, heir: asyncio.AbstractEventLoop, lent: _Borrowed,
                         port: int) -> None:
        task = heir.create_task(cls._take_over(lent, port), name="meshkit-admin-move")
        _moves.add(task)
        task.add_done_callback(_moves.discard)

    @classmethod
    async def _take_over(cls, lent: _Borrowed, port: int) -> None:
        """In a borrower's loop: serve ``lent``'s admin server here, on ``port``."""
        loop = asyncio.get_running_loop()
        slot = cls._slots.get(loop)
        if slot is None or slot.borrowed is not lent:
            with cls._fixed_lock:
                lent.borrowers.pop(loop, None)
            cls._hand_over(lent, port)
            return
        async with slot.lock:
            with cls._fixed_lock:
                first = lent.registries[0] if lent.registries else None
            server = AdminServer(dataclasses.replace(lent.options, port=port),
                                 dashboard_registry=first)
            try:
                await _in_a_context_of_its_own(server.start(), "meshkit-admin-start")
            except Exception as exc:  # warned: served without one
                _log.warning("admin server not moved to another event loop: its port "
                             "could not be bound again", admin_port=port,
                             error=f"{type(exc).__name__}: {exc}"[:300])
                with cls._fixed_lock:
                    if cls._lent is lent:
                        cls._lent = None
                return
            with cls._fixed_lock:  # listed with the swap: see _count
                lent.borrowers.pop(loop, None)
                lent.server = server
                registries = list(lent.registries)
            for registry in registries:
                server.add_registry(registry)
            slot.server, slot.borrowed = server, None
            _log.info("admin server moved to another event loop", url=server.url)

    @classmethod
    def _reserve(cls, port: int, loop: asyncio.AbstractEventLoop) -> bool:
        """Claim a fixed ``port`` for ``loop``'s admin server; ``False`` when the admin
        server of another loop, not closed, holds it (port 0 is always ``True``)."""
        if port == 0:
            return True
        with cls._fixed_lock:
            held = cls._fixed.get(port)
            holder = None if held is None else held()
            if holder is not None and holder is not loop and not holder.is_closed():
                return False
            cls._fixed[port] = weakref.ref(loop)
            return True

    @classmethod
    def _unreserve(cls, port: int, loop: asyncio.AbstractEventLoop) -> None:
        with cls._fixed_lock:
            held = cls._fixed.get(port)
            if held is not None and held() in (loop, None):
                del cls._fixed[port]

    @classmethod
    def _forget_in_forked_child(cls) -> None:
        """The parent's admin servers and loops are not the child's: it starts its own."""
        cls._fixed_lock = threading.Lock()
        cls._fixed = {}
        cls._lent = None
        cls._starting = None


os.register_at_fork(after_in_child=_SharedAdmin._forget_in_forked_child)


_MESH_CHECKS = {
    "DeadlineInterceptor": "deadline", "PeerIdentityInterceptor": "auth",
    "JWTAuthInterceptor": "auth", "AuthzInterceptor": "auth",
    "RateLimitInterceptor": "rate_limit", "FusedInterceptor": "deadline/auth/rate_limit",
}

def _admin_from_env() -> AdminOptions:
    """The admin server's options from ``MESHKIT_ADMIN_HOST`` (unset or empty:
    ``127.0.0.1``) and ``MESHKIT_ADMIN_PORT`` (unset or empty: 0, an ephemeral port); the
    default of :attr:`ServeOptions.admin`.

    Raises:
        ConfigError: ``MESHKIT_ADMIN_PORT`` is not a port number 0..65535, or
            ``MESHKIT_ADMIN_HOST`` is neither an IP address nor a host name (the variable
            named, its value quoted).
    """
    host = os.environ.get("MESHKIT_ADMIN_HOST", "").strip() or "127.0.0.1"
    raw = os.environ.get("MESHKIT_ADMIN_PORT", "")
    text = raw.strip()
    port = 0
    if text:
        # (at most 5 digits to int(): one of over 4,300 raises a bare ValueError)
        digits = text.lstrip("0") or "0"
        if not (text.isascii() and text.isdigit() and len(digits) <= 5
                and int(digits) < 65536):
            raise ConfigError(
                f"MESHKIT_ADMIN_PORT must be a port number 0..65535, got {raw!r}")
        port = int(digits)
    try:
        return AdminOptions(host=host, port=port)
    except ConfigError as exc:
        raise ConfigError(f"MESHKIT_ADMIN_HOST: {exc}") from None


AddServicer = Callable[[Any, Any], None]
"""A generated ``add_<Service>Servicer_to_server(servicer, server)`` function."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """How :class:`MeshServer` listens, registers and drains.

    Args:
        host: address to bind (default ``"127.0.0.1"``; ``"0.0.0.0"`` or ``"[::]"`` for all):
            an IP address (IPv6 bracketed or not) or a host name; registered without
            brackets.
        port: TCP port to bind; 0 (default) picks a free one, registered as bound.
        advertise_host: host put in the registry (brackets dropped); default ``host``, or
            the machine's host name when binding all interfaces (the unspecified address,
            however spelled: ``"0.0.0.0"``, ``"::"``, ``"0:0:0:0:0:0:0:0"``). Not itself
            the unspecified address (:class:`MeshServer` refuses it: ``ConfigError``).
        instance_id: unique id in the registry; default ``<service>-<hostname>-<pid>``,
            with ``-<port>`` added when a live server of this process already holds that
            id (a second server of the service in the process: with one id, the second
            registration would replace the first and either drain would deregister both).
            The port is added only then, so the usual one-server process keeps the id its
            logs and registry entries have always shown. A default longer than 128
            characters (a long service name on a long host name) keeps the service and
            the rest, shortens the host name and adds 8 hex digits of its SHA-256:
            ``<service>-<hostname prefix>-<hash>-<pid>[-<port>]``. A string of 1..128
            characters.
        tags: registry tags, any collection of strings, e.g. ``("v2",)`` or ``["v2"]``.
        meta: registry meta, a mapping of strings to strings, e.g. ``{"zone": "a"}``
            (kept as a copy).
        weight: weight for weighted balancers (>= 1, default 1).
        deadline: deadline admission and propagation
            (:class:`~meshkit.resilience.DeadlineOptions`, on by default); ``None`` turns
            it off.
        auth: peer identity, JWT and authorization checks
            (:class:`~meshkit.auth.AuthOptions`). Default: with ``tls``, the peer check
            alone (``AuthOptions()``: the client's chain re-verified against the mesh CA's
            constraints and its SPIFFE ID against ``tls.allowed_peers``); otherwise none.
            The peer check needs ``tls`` (``credentials=`` are opaque to meshkit): an
            ``AuthOptions()`` with nothing else to check on a server without it is a
            ``ConfigError``.
        rate_limit: per-caller rate limits (:class:`~meshkit.resilience.RateLimitOptions`;
            default none); callers over their rule get ``RESOURCE_EXHAUSTED``.
        interceptors: your own ``grpc.aio.ServerInterceptor`` s, a sequence (as
            ``grpc.aio.server(interceptors=)`` takes), run after the mesh's checks, first
            outermost; those with an ``async aclose()`` method are closed
            after the server stops (drained, or its failed :meth:`MeshServer.start`
            undone), once, each given 5 s (a close still running then is cancelled
            and logged, and the drain goes on). A plain-function (``def``) handler one of them
            returns in place of the server's runs as the server's own do (in
            ``handler_threads``, with meshkit's synchronous context, safe to ask
            ``peer()`` after the call ended). meshkit's check interceptors are refused
            here: use ``deadline``, ``auth`` and ``rate_limit``; so is a
            :class:`~meshkit.observability.TelemetryServerInterceptor`
            (:func:`~meshkit.observability.server_interceptors`) while ``telemetry`` is
            set, which installs its own (each call would count twice): give
            ``telemetry=None`` to install one here.
        tls: mTLS with workload identities (:class:`meshkit.auth.TLSOptions`): client
            certificates are required and verified; a renewed certificate file is picked up
            for new connections without restart.
        credentials: other ``grpc.ServerCredentials`` (not with ``tls``).
        insecure: plaintext, asked for explicitly (default ``False``); logged as a warning.
            Without it, ``tls`` or ``credentials``, the server takes its certificate from
            ``MESHKIT_CERT_DIR`` or refuses to start.
        grace_s: seconds in-flight calls get to finish when stopping (default 10.0).
            Open health ``Watch`` streams (clients with client-side health checking
            keep one per channel) are not waited for: the drain ends them (``OK``) once
            they have been sent ``NOT_SERVING``, so a server with nothing else in flight
            stops at once.
        drain_delay_s: seconds between deregistering and refusing mesh clients' new
            calls, so that callers' discovery catches up (default 1.0). The refusal
            phase that follows (:meth:`MeshServer.drain`) adds 0.05 s to a drain no
            mesh client calls during, 0.5 s at most.
        follow_health: the registration follows the health status the application sets
            on :attr:`MeshServer.health` (default ``True``), as a Kubernetes readiness
            probe takes a pod out of its Service's endpoints: while the status of ``""``
            (the whole server) or of the mesh service name is not ``SERVING``
            (:attr:`MeshServer.serving`: a dependency down, a cache warming), the
            instance is withdrawn from the registry, so mesh clients stop picking it
            within their watch interval (the server keeps serving the calls that still
            come: other clients, those in flight); once both are ``SERVING`` again and
            have stayed so ``readmit_after_s``, it is registered again. A server
            ``NOT_SERVING`` when :meth:`~MeshServer.start` registers is not registered
            until then (``start()`` returns the instance it will register). Each
            withdrawal or registration is bounded (10 s) and, when the registry fails it
            (logged), tried again a second later (the wait doubling while it fails, 16 s
            at most). A drain always takes the
            instance out for good (it stops following first). Registries that check the
            instance's gRPC health themselves (``ConsulOptions(check="grpc")`` or
            ``"both"``: ``checks_instance_health``) are left to do it once the instance
            is registered (one ``NOT_SERVING`` at start is registered once ``SERVING``
            there too): their checks ask ``grpc_health_service`` and ``""``.
            ``False``: registered from :meth:`~MeshServer.start` until the drain,
            whatever the health says (only ``/readyz`` shows it). The status is
            followed through the servicer's own ``Watch`` (no work per call), checked
            again every second besides.
        readmit_after_s: how long the health must have stayed ``SERVING`` (with no
            status set meanwhile) before a withdrawn instance is registered again
            (default 1.0; 0 for at once): an application whose status flaps stays out
            of the mesh until it settles. Only with ``follow_health``.
        reflection: serve gRPC server reflection (default ``True``): the
            ``grpc.reflection.v1alpha`` service and the same under ``grpc.reflection.v1``,
            listing the services given, health and reflection. A reflection servicer
            among the servicers given (either version) is served instead, and meshkit
            adds none of its own (its idle streams end at the drain's stop as meshkit's
            do, when its ``ServerReflectionInfo`` is an async generator, as
            grpcio-reflection's is).
        telemetry: traces, RED metrics and access logs for every call
            (:class:`meshkit.observability.TelemetryOptions`, on by default, installed
            outermost); ``None`` turns them off. Spans are exported when the environment
            asks (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
            ``MESHKIT_TRACE_FILE``): :meth:`MeshServer.start` sets the global provider up
            from it (:func:`~meshkit.observability.tracing_from_env`) only when the
            telemetry traces to the global provider (``tracing`` on, no
            ``tracer_provider``), as ``dial()`` does; with a provider of the
            application's own, or telemetry off, the global one is left alone.
        admin: the process's admin HTTP server (``/metrics``, ``/healthz``, ``/readyz``,
            ``/debug/mesh``), started with the first server of the process on
            ``MESHKIT_ADMIN_HOST`` (default ``127.0.0.1``; ``0.0.0.0`` for probes and a
            remote Prometheus, as ``deploy/k8s`` sets it) and ``MESHKIT_ADMIN_PORT``
            (default an ephemeral port) and announced in the
            registry meta ``admin_port``, with ``admin_host`` when it listens on another
            address than the registered host (``127.0.0.1`` for a server on ``::1``; not
            a loopback admin of a server registered under a reachable host); ``None`` for
            none. The servers of one event loop share it; a server in another loop
            (another thread's, a later ``asyncio.run()``) starts one of its loop, unless
            its fixed port (``MESHKIT_ADMIN_PORT``) is held by the admin server of another
            loop still running: then it serves without one (a warning; no ``admin_port``
            announced), since that one serves this process's ``/metrics``, ``/readyz``
            and ``/debug/mesh`` already.
        limits: bounds on in-flight work (:class:`ServerLimits`: concurrent calls per
            server and streams per connection, request size, flow-control windows, how long
            a request may take to arrive, keepalive and idle connections), on by default;
            calls over a limit get ``RESOURCE_EXHAUSTED``.
        server_options: extra grpc server arguments, a sequence of ``(name, value)`` (as
            ``grpc.aio.server(options=)`` takes; not a mapping: give
            ``tuple(mapping.items())``), checked here: an item that is not a pair of a
            non-empty name and a value (not ``None``; an int that fits a C ``int``,
            -2147483648..2147483647, as grpc takes it) is a ``ConfigError`` quoting it;
            a name given as ``bytes`` is decoded (ASCII, else a ``ConfigError``), so it
            is the argument of its ``str`` spelling; they override those ``limits`` sets,
            and meshkit's ``("grpc.so_reuseport", 0)``, key by key. By default a port
            another socket listens on is refused at :meth:`MeshServer.start`
            (``RuntimeError``: "Failed to bind"), as grpc-go and a plain ``bind()`` do and
            Envoy unless ``enable_reuse_port``; grpc's own default (``SO_REUSEPORT`` on)
            would let a second server bind the port and the kernel spread connections
            over both. Pass ``(("grpc.so_reuseport", 1),)`` to every server that shares
            a port on purpose (pre-fork workers). A ``grpc.keepalive_timeout_ms`` here
            without ``grpc.http2.ping_timeout_ms`` sets the ping timeout to the same
            value (grpc core 1.85 arms only the ping timeout, grpc/grpc#39239).
        compression: the default compression of response messages (default ``None``:
            none, as grpc's): a ``grpc.Compression`` member, or its name as a string, any
            case (``"gzip"``, ``"deflate"``, ``"none"``); grpc.aio's
            ``server(compression=)`` (the server argument
            ``grpc.default_compression_algorithm``). grpc core compresses a response with
            it only for a client that accepts it (its ``grpc-accept-encoding``: grpc
            clients accept gzip and deflate), else sends it uncompressed; a handler's
            ``context.set_compression()`` wins for its call. Compressed requests are
            accepted whatever this is. Compression costs CPU on both sides and pays for
            large, repetitive messages. Refused beside
            ``grpc.default_compression_algorithm`` in ``server_options``.
        maximum_concurrent_rpcs: cap on concurrent calls; over it callers get
            ``RESOURCE_EXHAUSTED``; when set it overrides ``limits.max_concurrent_rpcs``
            (default ``None``: the limits' value).
        handler_threads: how many threads run the server's plain-function (``def``, not
            ``async def``) handlers, a pool the server owns (threads named
            ``meshkit-handler-<service>_<n>``, each started when a call first needs it,
            also grpc.aio's ``migration_thread_pool``), an int >= 1. A thread that
            cannot be started (``can't start new thread``: a container's ``pids.max``,
            ``RLIMIT_NPROC``): with other threads in the pool the call waits for one of
            them (a ``meshkit.server`` warning, once until a start works); with none it
            is refused ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer
            (``meshkit-nack: 1``), none of its handler run, which mesh clients send to
            another endpoint as :mod:`meshkit.resilience`'s nack rules allow. Default
            ``None``: Python's default for a thread pool, ``min(32, cpus + 4)`` (6 on 2
            cores; the CPUs the process may run on, from Python 3.13), as
            many as the loop's default executor they ran in before. Calls admitted past
            it (each holding one of ``limits.max_concurrent_rpcs``, 32 by default, a
            plain request stream's too) wait for a thread, as a synchronous
            ``grpc.server(ThreadPoolExecutor(n))``'s calls wait for one of its ``n``
            workers; give the call slots' count for a thread per admitted call (handlers
            waiting on a slow database). A plain handler's call holds its slot as long
            as it holds its thread: a call whose caller left keeps it until its handler
            returns, and a plain request or response stream holds its thread (and its
            slot) until the stream ends. Blocked handlers never hold the loop's default
            executor, which ``/metrics``'s collectors (the admin server has a thread of
            its own) and ``asyncio.to_thread`` need (the Consul and etcd registries look
            names up on threads of their own).
            The pool is shut down when the drain ends (or a failed start is undone)
            without waiting for handlers still running (their threads end when they
            return; calls still waiting for a thread never run); the interpreter's exit
            waits for them, as it did for the default executor's.
        expose_exception_text: send an unhandled exception's text to the caller, as
            grpc.aio does (``UNKNOWN`` "Unexpected <class 'X'>: <text>"; for a development
            server). Default ``False``: the caller gets ``UNKNOWN`` naming the exception's
            type only, and the server logs the exception with its text and traceback
            (``meshkit.server``, event ``unhandled exception``); a unary handler that
            returns ``None`` with no status set gets ``INTERNAL`` (see
            :mod:`meshkit._unhandled`). ``True`` leaves both to grpc.aio, and records the
            text and stack trace on the server span too (as
            ``TelemetryOptions(expose_exception_text=True)``). In both modes a handler's
            ``meshkit.auth.PermissionDeniedError`` or ``UnauthenticatedError`` is
            answered with its own status and details, and a downstream call's
            ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED`` (not a message size limit's) that
            escaped the handler, no code set, is answered ``RESOURCE_EXHAUSTED`` "a call
            the handler made was refused (<CODE>)" with the trailer
            ``meshkit-downstream-status: <CODE>`` (see
            :func:`meshkit._unhandled.downstream_refusal`).
        generic_methods: method patterns (:mod:`meshkit._methods` spellings, e.g.
            ``("/proxy.v1.Cache/Get", "proxy.v1.Cache/*")``) of methods your generic
            handlers serve that telemetry labels by name in the metrics (``grpc_service``,
            ``grpc_method``) as it labels registered methods (default none). Registered
            are the methods ``add_registered_method_handlers`` adds (generated
            ``add_*_to_server`` functions, grpcio-tools 1.62 and later) and those of a
            ``grpc.method_handlers_generic_handler`` (older generated code, hand-written
            services); any other method a generic handler serves is counted as
            ``grpc_service="other", grpc_method="other"`` (gRFC A66: callers choose
            those names, and each would add series). A glob lets callers choose names
            again: past ``MAX_SERVER_METHODS`` (1,000) labelled methods per registry, the
            further ones are ``other`` too. Spans and access-log lines keep the name the
            caller sent. The rate limiter (``rate_limit``) counts the calls of every
            method not registered nor named here under the name of the rule that
            governs it: callers' made-up names share one budget per rule and caller
            (:meth:`~meshkit.resilience.ratelimit.StorageLimiter.counted_as`), while a
            registered or named method has its own (a glob here names every method it
            matches: each made-up name it matches gets a budget of its own).

    The collections are stored as tuples (a list changed later does not change the
    options).

    Every server answers a request that does not decode with ``INVALID_ARGUMENT``
    "request is not a valid <Type>", counted by telemetry like any call.

    Raises:
        ConfigError: a value is out of range or of the wrong type (``True`` or a string
            for a number, a flag such as ``insecure`` that is not ``True`` or ``False``
            (a string ``"false"`` would be truthy), an options field (``deadline``,
            ``auth``, ``rate_limit``, ``tls``, ``credentials``, ``telemetry``, ``admin``,
            ``limits``) that is not an instance of its class (or a subclass) or ``None``
            (``True``, a mapping, a path), an ``interceptors`` item that is no
            ``grpc.aio.ServerInterceptor``, one string, ``None`` or a non-string item
            for ``tags`` or ``generic_methods``, a bad
            ``generic_methods`` pattern, a mapping or a bad item in ``server_options``,
            a ``compression`` that is neither a ``grpc.Compression`` member nor one of
            its names (``"br"``, ``2``), or given beside
            ``grpc.default_compression_algorithm`` in ``server_options``,
            a ``host`` or ``advertise_host`` that is neither an IP address nor a host
            name, a ``meta`` that is no mapping of strings to strings, an
            ``instance_id`` that is no string of 1..128 characters; quoted in the
            message), or, for the default ``admin``, ``MESHKIT_ADMIN_PORT`` is not a port
            number or ``MESHKIT_ADMIN_HOST`` not a host (named, quoted), or
            ``interceptors`` holds one of meshkit's check interceptors (the option to
            use named) or a ``TelemetryServerInterceptor`` while ``telemetry`` is set
            (quoted; the message says ``telemetry=None``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str | None = None
    instance_id: str | None = None
    tags: Normalised[Collection[str], tuple[str, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    meta: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    deadline: DeadlineOptions | None = field(default_factory=DeadlineOptions)
    auth: AuthOptions | None = None
    rate_limit: RateLimitOptions | None = None
    interceptors: Normalised[Sequence[grpc.aio.ServerInterceptor],
                             tuple[grpc.aio.ServerInterceptor, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    tls: TLSOptions | None = None
    credentials: grpc.ServerCredentials | None = None
    insecure: bool = False
    grace_s: float = 10.0
    drain_delay_s: float = 1.0
    follow_health: bool = True
    readmit_after_s: float = 1.0
    reflection: bool = True
    telemetry: TelemetryOptions | None = field(default_factory=TelemetryOptions)
    admin: AdminOptions | None = field(default_factory=_admin_from_env)
    limits: ServerLimits = field(default_factory=ServerLimits)
    server_options: Normalised[Sequence[tuple[str, Any]], tuple[tuple[str, Any], ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    compression: Normalised[grpc.Compression | str | None, grpc.Compression | None] = (
        Normalised(None))  # noqa: RUF009 - immutable: _fields.py
    maximum_concurrent_rpcs: int | None = None
    handler_threads: int | None = None
    expose_exception_text: bool = False
    generic_methods: Normalised[Collection[str], tuple[str, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py

    def __post_init__(self) -> None:
        check_instance("deadline", self.deadline, DeadlineOptions)
        check_secret_holder("auth", self.auth, AuthOptions)
        check_secret_holder("rate_limit", self.rate_limit, RateLimitOptions)
        check_secret_holder("tls", self.tls, TLSOptions)
        check_secret_holder(
            "credentials", self.credentials, grpc.ServerCredentials,
            what="a grpc.ServerCredentials (grpc.ssl_server_credentials()...)")
        check_instance("telemetry", self.telemetry, TelemetryOptions)
        check_instance("admin", self.admin, AdminOptions)
        check_bool("insecure", self.insecure)
        check_bool("reflection", self.reflection)
        check_bool("follow_health", self.follow_health)
        check_bool("expose_exception_text", self.expose_exception_text)
        check_host("host", self.host)
        if self.advertise_host is not None:
            check_host("advertise_host", self.advertise_host)
        check_int("port", self.port, low=0, high=65535)
        if self.tls is not None and self.credentials is not None:
            raise ConfigError("give tls or credentials, not both")
        if self.insecure and (self.tls is not None or self.credentials is not None):
            raise ConfigError("insecure=True contradicts tls/credentials")
        check_int("weight", self.weight)
        if self.instance_id is not None and not (
                isinstance(self.instance_id, str) and 1 <= len(self.instance_id) <= 128):
            raise ConfigError(
                f"instance_id must be 1..128 characters, got {self.instance_id!r}")
        object.__setattr__(self, "meta", check_string_map("meta", self.meta))
        check_number("grace_s", self.grace_s, finite=False)
        check_number("drain_delay_s", self.drain_delay_s)  # inf: a drain that never stops
        check_number("readmit_after_s", self.readmit_after_s)
        if self.maximum_concurrent_rpcs is not None:
            check_int("maximum_concurrent_rpcs", self.maximum_concurrent_rpcs)
        if self.handler_threads is not None:
            check_int("handler_threads", self.handler_threads)
        if not isinstance(self.limits, ServerLimits):
            raise ConfigError(f"limits must be a ServerLimits, got {self.limits!r}")
        object.__setattr__(self, "tags", check_strings("tags", self.tags))
        object.__setattr__(self, "generic_methods",
                           check_strings("generic_methods", self.generic_methods))
        MethodMatcher.of(self.generic_methods, where="generic_methods")  # validates now
        object.__setattr__(self, "interceptors", check_tuple("interceptors", self.interceptors))
        for icpt in self.interceptors:
            option = _MESH_CHECKS.get(type(icpt).__name__)
            if option is not None:
                raise ConfigError(
                    f"{type(icpt).__name__} in interceptors: serve() orders the mesh's checks "
                    f"itself; use ServeOptions({option}=...) instead")
            # what grpc.aio.server() takes (anything else: a ValueError at start())
            check_instance("interceptors", icpt, grpc.aio.ServerInterceptor, optional=False,
                           what="grpc.aio.ServerInterceptor instances")
            if self.telemetry is not None and isinstance(icpt, TelemetryServerInterceptor):
                raise ConfigError(
                    f"{icpt!r} in interceptors while telemetry is set (it defaults to "
                    "TelemetryOptions() and installs its own): every call would be counted, "
                    "traced and logged twice; give telemetry=None to install "
                    "server_interceptors() yourself, or leave it out and set "
                    "telemetry=TelemetryOptions(...)")
        object.__setattr__(self, "server_options",
                           check_grpc_options("server_options", self.server_options))
        object.__setattr__(self, "compression",
                           check_compression("compression", self.compression))
        if self.compression is not None:
            for item in self.server_options:
                if item[0] == "grpc.default_compression_algorithm":
                    raise ConfigError(
                        f"server_options: {item!r} beside compression="
                        f"{self.compression!r}: give the default compression once, "
                        "with compression (or with server_options, not both)")


def _servicer_pairs(service: str, servicers: object) -> list[tuple[AddServicer, Any]]:
    """``servicers`` as a list of ``(add_XServicer_to_server, servicer)`` pairs.

    Raises:
        ConfigError: ``servicers`` is not a collection of such pairs (one pair given
            bare, ``(add_Foo, Foo())`` for ``[(add_Foo, Foo())]``; an item that is not a
            pair, or whose first element cannot be called), the bad item named by its
            type (a servicer's repr is not quoted); found at :meth:`MeshServer.start`
            as a ``TypeError`` ("cannot unpack non-iterable function object") before.
    """
    where = f"serve({service!r}): servicers"
    if isinstance(servicers, str | bytes) or not isinstance(servicers, Iterable):
        raise ConfigError(f"{where} must be a list of (add_XServicer_to_server, servicer) "
                          f"pairs, got a {type(servicers).__qualname__}")
    pairs: list[tuple[AddServicer, Any]] = []
    for item in servicers:
        if not (isinstance(item, tuple | list) and len(item) == 2 and callable(item[0])):
            hint = (" (one pair given bare: put it in a list, [(add_..., servicer)])"
                    if callable(item) else "")
            shape = (f"a {type(item).__qualname__} of {len(item)}"
                     if isinstance(item, tuple | list) and len(item) != 2
                     else f"a {type(item).__qualname__}")
            raise ConfigError(f"{where} must be (add_XServicer_to_server, servicer) pairs, "
                              f"got {shape}{hint}")
        pairs.append((item[0], item[1]))
    return pairs


def server_chain(service: str, options: ServeOptions) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """The interceptors ``serve()`` installs for ``options``, in the one documented order
    (module docstring): telemetry, deadline, auth, rate limit, the answer to unhandled
    exceptions (refusals and downstream refusals alone with
    ``options.expose_exception_text``), then
    ``options.interceptors``.

    Args:
        service: the mesh service name (labels telemetry).
        options: the server's :class:`ServeOptions` (``tls`` already resolved).

    Raises:
        ConfigError: ``auth`` whose only check is the peer check (``AuthOptions()``) on a
            server without ``tls`` (``credentials=`` or ``insecure=True``): nothing would be
            checked. With a verifier or a policy as well, the peer check is left out and a
            warning logged when the server has ``credentials=``. ``options`` no
            :class:`ServeOptions` (``None``, a ``DialOptions``; quoted).
    """
    check_instance("options", options, ServeOptions, optional=False)
    chain: list[grpc.aio.ServerInterceptor] = []
    telemetry = options.telemetry
    if telemetry is not None:
        if options.expose_exception_text and not telemetry.expose_exception_text:
            # a server that sends the text to its callers hides it from no span either
            telemetry = dataclasses.replace(telemetry, expose_exception_text=True)
        chain.extend(server_interceptors(service, telemetry))
    if options.deadline is not None:
        chain.append(options.deadline.interceptor())
    auth = options.auth
    if auth is None and options.tls is not None:
        auth = AuthOptions()  # mTLS: the peer's chain and identity are checked by default
    if auth is not None:
        checks = auth.interceptors(options.tls)
        if not checks:  # check_peers alone, without tls: nothing would be checked
            raise ConfigError(
                f"serve({service!r}): auth={auth!r} checks peers only with "
                "ServeOptions(tls=TLSOptions(...)); with credentials= or insecure=True it "
                "would check nothing: pass tls=, a verifier or a policy, or auth=None")
        if options.tls is None and auth.check_peers and options.credentials is not None:
            _log.warning("the peer check (AuthOptions.check_peers) needs ServeOptions(tls=...)"
                         ": with credentials= the peers' identities are not checked",
                         service=service)
        chain.extend(checks)
    if options.rate_limit is not None:
        chain.append(RateLimitInterceptor(options.rate_limit))
    # exposing the text: a handler's refusal (PermissionDeniedError...) still gets its status
    chain.append(UnhandledErrorInterceptor(
        expose_exception_text=options.expose_exception_text))
    chain.extend(options.interceptors)
    return tuple(chain)


class _MethodTable(grpc.GenericRpcHandler):
    """The registered method handlers of a server's services, by full method path, as one
    generic handler (what :class:`_Recorder` gives grpc instead of registering them), the
    first one grpc asks; ``later`` are the generic handlers grpc asks after it (in order).

    :meth:`refuse` makes it answer a meshkit client's call of a unary-response method (but
    the health service's) with a refusal from then on, generic handlers' methods included:
    the drain's refusal phase (:meth:`MeshServer.drain`). It swaps the table's
    :meth:`service` for one that reads the call's user agent, so a call looked up before
    pays nothing for it."""

    def __init__(self, methods: dict[str, Handler],
                 later: Sequence[grpc.GenericRpcHandler] = ()) -> None:
        self._methods = methods
        self._later = tuple(later)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The method's handler, or ``None`` (another handler, or ``UNIMPLEMENTED``)."""
        return self._methods.get(handler_call_details.method)

    def refuse(self, refusal: Handler) -> None:
        """From now on answer with ``refusal`` every call of a meshkit client
        (:func:`_from_mesh_client`) of a method whose handler (this table's, else the
        first of the ``later`` generic handlers that serves it) has a unary response: the
        calls a meshkit client retries on another endpoint when nacked, whatever the
        method's idempotency (:mod:`meshkit.resilience._retry`; a client-streaming call
        whose request is a generator only when it had no endpoint: the server cannot tell
        its request kind, the request gate's handlers all stream their requests). Not
        the health service's (``Check``, ``Watch``: probes and watchers are told
        ``NOT_SERVING``). Every other
        call (streaming responses, which meshkit's client does not retry
        when nacked unless safe to repeat, something a server cannot tell; unknown
        methods; other clients' calls) is looked up as before: served as an in-flight
        call until the stop's GOAWAY moves its client on. Whether a method is refused is
        worked out once per method (a handler found) and cached."""
        methods = self._methods
        nackable: dict[str, bool] = {}
        handler_of = self._handler

        def refusing(handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
            method = handler_call_details.method
            nack = nackable.get(method)
            if nack is None:
                handler = handler_of(handler_call_details)
                if handler is None:  # unknown: UNIMPLEMENTED at once, nothing waits
                    return None
                nack = nackable[method] = (
                    not method.startswith(_HEALTH_PREFIX)
                    and not getattr(handler, "response_streaming", True))
            if nack and _from_mesh_client(handler_call_details.invocation_metadata):
                return refusal
            return methods.get(method)  # (or a generic handler's)

        # grpc looks the bound method up on every call: the instance's own shadows it
        self.service = refusing  # type: ignore[method-assign]

    def _handler(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The handler grpc would run for the call: this table's, else the first of the
        ``later`` generic handlers' (``None`` when none serves the method)."""
        handler = self._methods.get(handler_call_details.method)
        for later in self._later:
            if handler is not None:
                break
            handler = later.service(handler_call_details)
        return handler


def _from_mesh_client(metadata: Any) -> bool:
    """Whether a call's invocation metadata (``(key, value)`` pairs, or ``None``) comes
    from a meshkit client: its ``user-agent`` holds the :data:`MESH_USER_AGENT` product
    token (``meshkit/<version>``), which every sub-channel of a ``MeshChannel`` adds
    (``grpc.secondary_user_agent``). Read only in the drain's refusal phase."""
    for key, value in metadata or ():
        if key == "user-agent":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            return isinstance(value, str) and any(
                token.startswith(_MESH_AGENT_PREFIX) for token in value.split())
    return False


_MESH_AGENT_PREFIX = MESH_USER_AGENT.split("/", 1)[0] + "/"


def _method_table(handler: Any) -> tuple[str, ...]:
    """The full method names a generic handler made by
    ``grpc.method_handlers_generic_handler`` serves (what ``add_*_to_server`` functions
    generated before grpcio-tools 1.62 add, and hand-written services): its table, known
    when it is added; ``()`` for any other generic handler (one that may serve any name)."""
    table = getattr(handler, "_method_handlers", None)  # grpc's DictionaryGenericHandler
    if not isinstance(table, dict):
        return ()
    return tuple(m for m in table if isinstance(m, str) and m.startswith("/"))


_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
_HEALTH_WATCH = f"{_HEALTH_PREFIX}Watch"


class _StatusSink:
    """The context :meth:`MeshServer._watch_status` hands the health servicer's ``Watch``:
    each response written sets ``changed``."""

    def __init__(self, changed: asyncio.Event) -> None:
        self._changed = changed

    async def write(self, message: Any) -> None:
        self._changed.set()


class _WatchContext:
    """The call's context as a health ``Watch`` handler wrapped by :class:`_HealthWatches`
    sees it: ``write`` is tracked (whether one is under way, the status last written), so
    the drain ends the watch between two writes, never during one; everything else is
    the call's own context."""

    __slots__ = ("_context", "_idle", "last_status")

    def __init__(self, context: Any) -> None:
        self._context = context
        self._idle = asyncio.Event()
        self._idle.set()
        self.last_status: Any = None

    async def write(self, message: Any) -> None:
        """The call's ``context.write(message)``, tracked."""
        self._idle.clear()
        try:
            await self._context.write(message)
        finally:
            self._idle.set()
        self.last_status = getattr(message, "status", None)

    async def idle(self) -> None:
        """Return once no ``write`` is under way (at once when none is)."""
        while not self._idle.is_set():
            await self._idle.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


_HEALTH_LIST_MAX = 100
"""The most services ``grpc.health.v1.Health/List`` answers (gRFC A90: "The maximum
number of services to return is 100; responses exceeding this limit will result in a
RESOURCE_EXHAUSTED error"; grpc-go's ``maxAllowedServices``)."""


class _MeshHealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # untyped
    """meshkit's own health servicer (``MeshServer.health`` unless you give yours):
    grpcio-health-checking's ``grpc_health.v1.health.aio.HealthServicer`` (``Check``,
    ``Watch``, ``set``, ``enter_graceful_shutdown``, as grpc/grpc doc/health-checking.md
    says) with the ``List`` method of gRFC A90, which that servicer lacks (its generated
    base answered ``UNIMPLEMENTED`` and the server logged an unhandled
    ``NotImplementedError`` per call)."""

    async def List(self, request: health_pb2.HealthListRequest,
                   context: Any) -> health_pb2.HealthListResponse:
        """A snapshot of every service's status (``""``, the whole server, and each
        name set with :meth:`set`): ``HealthListResponse.statuses``, name to
        ``HealthCheckResponse``; once the drain began, each ``NOT_SERVING``. Over
        :data:`_HEALTH_LIST_MAX` (100) services: ``RESOURCE_EXHAUSTED`` naming the
        maximum (gRFC A90, as grpc-go's ``health.Server.List``). Idempotent, no side
        effect."""
        statuses = dict(self._server_status)  # (one snapshot: no await in between)
        if len(statuses) > _HEALTH_LIST_MAX:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server health list exceeds maximum capacity: "
                                f"{_HEALTH_LIST_MAX}")
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in statuses.items()})


class _HealthWatches:
    """Ends one server's health ``Watch`` calls when it drains (and its idle server
    reflection streams: :meth:`idle_ending`).

    A gRPC client with client-side health checking keeps a ``grpc.health.v1.Health/Watch``
    call open for its channel's life; it never ends by itself, so ``server.stop(grace_s)``
    waited the whole ``grace_s`` for it (then cut it ``UNAVAILABLE``) at every drain,
    however idle the server. :meth:`wrap` makes each ``Watch`` handler (meshkit's servicer
    or the user's, an ``async def`` writing with ``context.write`` or an async generator)
    end when :meth:`end` is called: after a ``write`` under way has finished, the
    servicer's ``Watch`` is cancelled, the watcher is sent ``NOT_SERVING`` unless that is
    the status it was last sent, and the call ends ``OK``. A ``Watch`` request over 4 KiB
    is refused ``RESOURCE_EXHAUSTED`` before the servicer sees it (see
    :func:`_watch_request_size`). A ``Watch`` that is a plain function (run off the
    event loop) is left as it is."""

    __slots__ = ("_ending",)

    def __init__(self) -> None:
        self._ending = asyncio.Event()

    def end(self) -> None:
        """End every open ``Watch`` call (and answer one opened later ``NOT_SERVING``,
        then end it); they end as their tasks next run."""
        self._ending.set()

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` (the health service's ``Watch``, unary-stream) ending at
        :meth:`end` as the class says; any other shape is returned as it is."""
        behavior: Any = handler.unary_stream
        if behavior is None or handler.request_streaming or not handler.response_streaming:
            return handler
        stream: Callable[[Any, Any], AsyncGenerator[Any, None]]
        if inspect.isasyncgenfunction(behavior):
            stream = behavior
        elif inspect.iscoroutinefunction(behavior):
            writer = behavior

            async def written(request: Any, context: Any) -> AsyncGenerator[Any, None]:
                await writer(request, context)
                return
                yield  # (an async generator that yields nothing: the writer wrote)

            stream = written
        else:
            return handler
        ending = self._ending

        async def watch(request: Any, context: Any) -> AsyncIterator[Any]:
            size = _watch_request_size(request)
            if size > _HEALTH_REQUEST_BYTES:  # held for the stream's life: bounded
                request = None
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"health watch request of {size} bytes is over "
                                    f"{_HEALTH_REQUEST_BYTES}")
            ctx = _WatchContext(context)
            responses = stream(request, ctx)
            told = asyncio.ensure_future(ending.wait())
            step: asyncio.Future[Any] | None = None
            try:
                while True:
                    step = asyncio.ensure_future(responses.__anext__())
                    await asyncio.wait((step, told), return_when=asyncio.FIRST_COMPLETED)
                    if not step.done():
                        break
                    try:
                        item = step.result()
                    except StopAsyncIteration:
                        return  # the servicer ended the watch itself
                    ctx.last_status = getattr(item, "status", None)
                    yield item
                # the server drains: end the watch between two of the servicer's writes
                await ctx.idle()
                if not step.done():
                    step.cancel()  # no await since idle(): no write can have begun
                await asyncio.wait((step,))
                if not step.cancelled():
                    try:
                        item = step.result()
                    except StopAsyncIteration:
                        return
                    ctx.last_status = getattr(item, "status", None)
                    yield item
                if ctx.last_status != _NOT_SERVING:
                    yield health_pb2.HealthCheckResponse(status=_NOT_SERVING)
            finally:
                told.cancel()
                if step is not None:
                    if not step.done():
                        step.cancel()  # the call was cancelled (the watcher left)
                        await asyncio.wait((step,))
                    if not step.cancelled():  # ended in the turn of the cancel: read,
                        step.exception()  # so no "exception was never retrieved"
                await responses.aclose()

        return grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def ending_reflection(self, handler: Handler) -> Handler:
        """``handler`` (a server reflection ``ServerReflectionInfo``, stream-stream, of
        meshkit's reflection servicer or yours) whose idle stream ends at :meth:`end`
        (:meth:`idle_ending`) when its behaviour is an async generator function, as
        grpcio-reflection's is; any other shape is returned as it is."""
        behavior: Any = handler.stream_stream
        if (behavior is None or not handler.request_streaming
                or not handler.response_streaming
                or not inspect.isasyncgenfunction(behavior)):
            return handler
        return grpc.stream_stream_rpc_method_handler(
            self.idle_ending(behavior), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def idle_ending(self, behavior: Callable[[Any, Any], AsyncGenerator[Any, None]]
                    ) -> Callable[[Any, Any], AsyncGenerator[Any, None]]:
        """``behavior`` (a bidi servicer method, an async generator of the answers to its
        request iterator: server reflection's ``ServerReflectionInfo``) whose requests
        end at :meth:`end` while it waits for the next one: the servicer's loop over
        them ends and the call ends ``OK``; a request it has begun to answer is
        answered first. A reflection client keeps its stream open between requests
        (grpcreflect's, and so grpcui, for its whole session), and the stop waited the
        whole ``grace_s`` for it, then cut it ``UNAVAILABLE``."""
        ending = self._ending

        async def stream(requests: Any, context: Any) -> AsyncGenerator[Any, None]:
            async with contextlib.aclosing(
                    behavior(_until_ending(requests, ending), context)) as answers:
                async for answer in answers:
                    yield answer

        return stream


async def _until_ending(requests: Any, ending: asyncio.Event) -> AsyncGenerator[Any, None]:
    """The request stream ``requests`` (an async iterable), ended once ``ending`` is set
    while it waits for a request (the read under way cancelled); see
    :meth:`_HealthWatches.idle_ending`."""
    it = aiter(requests)
    told: asyncio.Future[Any] | None = None
    read: asyncio.Future[Any] | None = None
    try:
        while not ending.is_set():
            read = asyncio.ensure_future(anext(it))
            if told is None:
                told = asyncio.ensure_future(ending.wait())
            await asyncio.wait((read, told), return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                return  # the stop: no request under way (the read is cancelled below)
            try:
                request = read.result()
            except StopAsyncIteration:
                return
            read = None
            yield request
    finally:
        if told is not None:
            told.cancel()
        if read is not None:
            if not read.done():
                read.cancel()
                await asyncio.wait((read,))
            if not read.cancelled():  # ended (the client's end) in the turn of the
                read.exception()  # call's cancel: read, so asyncio logs no "never retrieved"


def _watch_request_size(request: Any) -> int:
    """The encoded size of a health ``Watch`` request (a ``HealthCheckRequest``; 0 for
    one that cannot tell). The ``Watch`` bypasses the request gate (it takes no call
    slot) and its servicer holds the request for the stream's whole life, so one over
    the reserved ``Check``'s bound (4 KiB: a service name) is refused
    ``RESOURCE_EXHAUSTED`` (see :meth:`_HealthWatches.wrap`). Asked once per ``Watch``."""
    byte_size = getattr(request, "ByteSize", None)
    try:
        return int(byte_size()) if callable(byte_size) else 0
    except Exception:
        return 0


class _WatchEndingHandler(grpc.GenericRpcHandler):
    """A generic handler of the health service (``grpc.method_handlers_generic_handler``,
    as generated ``add_HealthServicer_to_server`` adds beside the registered methods)
    whose ``Watch`` is wrapped by :meth:`_HealthWatches.wrap` (once per handler); or,
    given ``method`` and ``wrap``, of another service whose method ``method`` is wrapped
    by ``wrap`` (server reflection's stream: :meth:`_HealthWatches.ending_reflection`)."""

    def __init__(self, inner: grpc.GenericRpcHandler, watches: _HealthWatches,
                 method: str = _HEALTH_WATCH,
                 wrap: Callable[[Handler], Handler] | None = None) -> None:
        self._inner = inner
        self._method = method
        self._wrap = watches.wrap if wrap is None else wrap
        self._wrapped: tuple[Handler, Handler] | None = None

    def service_name(self) -> str | None:
        """The wrapped handler's service name."""
        name = getattr(self._inner, "service_name", None)
        return name() if callable(name) else None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The wrapped handler's method handler, its ``Watch`` ending at the drain."""
        handler: Handler | None = self._inner.service(handler_call_details)
        if handler is None or handler_call_details.method != self._method:
            return handler
        wrapped = self._wrapped
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped = (handler, self._wrap(handler))
        return wrapped[1]


class _Recorder:
    """Stands in for the server while generated ``add_*_to_server`` functions run.

    It learns the full names of the services they add (for health and reflection), guards
    every method handler so that a request that does not decode answers
    ``INVALID_ARGUMENT`` (:func:`meshkit._limits.guard_method_handler`; both the generic and
    the registered-method paths), then passes each through ``resolve`` (the server's own
    chain, once per method) when given. :meth:`install` hands them to the grpc server.

    **Registered methods are served from one method table.** grpc.aio's accept loop keeps a
    request future per registered method, plus one for all other methods, and awaits them
    with ``asyncio.wait`` before every incoming call: each registered method costs every
    call about 6,000 instructions (measured: the health service's three methods, always
    added, cost a plain grpc.aio server 22k per call, 3 % of its whole cost; a seven-method
    service 44k). The recorder keeps the handlers of ``add_registered_method_handlers`` in
    a :class:`_MethodTable` instead, given to grpc as the first generic handler (so a
    registered method still takes precedence over a generic handler of the same path, as
    in grpc), and the loop waits on one future whatever the server serves. Under a grpc
    observability plugin registered before the server starts, the methods are registered
    as given (:func:`meshkit._registration.grpc_observability_active`).
    """

    def __init__(self, server: grpc.aio.Server, resolve: Resolver | None = None, *,
                 register_methods: bool = False, known: set[str] | None = None,
                 watches: _HealthWatches | None = None) -> None:
        self._server = server
        self._resolve = resolve
        self._register = register_methods
        self._watches = watches
        self._methods: dict[str, Handler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self.names: list[str] = []
        self._added: set[str] = set()  # the service names added since take_added()
        self.known: set[str] = set() if known is None else known
        """The full names (``/pkg.Service/Method``) of the methods registered so far:
        those of ``add_registered_method_handlers`` and those of a generic handler whose
        method table is known (:func:`_method_table`), each added before its handler is
        resolved (telemetry labels these by name)."""
        self.any_name = False
        """Whether a generic handler added may serve any method name (no method table)."""

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        watches = self._watches
        for h in handlers:
            name = getattr(h, "service_name", None)
            service = name() if callable(name) else None
            if service:
                self._added.add(service)
                if service not in self.names:
                    self.names.append(service)
            self.known.update(_method_table(h))
            if not isinstance(getattr(h, "_method_handlers", None), dict):
                self.any_name = True  # (see _method_table)
            if watches is not None and service == health.SERVICE_NAME:
                h = _WatchEndingHandler(h, watches)
            elif watches is not None and service in _REFLECTION_NAMES:
                h = _WatchEndingHandler(h, watches, f"/{service}/{_REFLECTION_METHOD}",
                                        watches.ending_reflection)
            self._generic.append(guard_generic_handler(h, self._resolve))

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        self._added.add(service_name)
        if service_name not in self.names:
            self.names.append(service_name)
        self.known.update(f"/{service_name}/{name}" for name in handlers)
        if (self._watches is not None and service_name == health.SERVICE_NAME
                and "Watch" in handlers):
            handlers = {**handlers, "Watch": self._watches.wrap(handlers["Watch"])}
        elif (self._watches is not None and service_name in _REFLECTION_NAMES
                and _REFLECTION_METHOD in handlers):  # its idle streams end at the stop
            handlers = {**handlers, _REFLECTION_METHOD: self._watches.ending_reflection(
                handlers[_REFLECTION_METHOD])}
        resolve = self._resolve
        methods = {name: (guard_method_handler(h) if resolve is None
                          else resolve(f"/{service_name}/{name}", guard_method_handler(h)))
                   for name, h in handlers.items()}
        if self._register:
            self._server.add_registered_method_handlers(service_name, methods)
        else:
            self._methods.update({f"/{service_name}/{name}": h for name, h in methods.items()})

    def take_added(self) -> set[str]:
        """The service names added since the last call (or since the recorder was made)."""
        added, self._added = self._added, set()
        return added

    def install(self) -> _MethodTable | None:
        """Give the grpc server the handlers added so far: the method table first, then
        the generic handlers in the order they were added. Returns the method table
        (``None`` when no method was registered: a grpc observability plugin is active,
        or every service was added as a generic handler)."""
        table = _MethodTable(self._methods, self._generic) if self._methods else None
        handlers = ([table] if table is not None else []) + self._generic
        if handlers:
            self._server.add_generic_rpc_handlers(handlers)
        self._methods, self._generic = {}, []
        return table

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class MeshServer:
    """A grpc.aio server that registers itself and drains gracefully.

    Args:
        service: mesh service name to register, e.g. ``"userd"``.
        servicers: ``[(add_XServicer_to_server, servicer), ...]``. One of them may be
            your own health servicer, ``(health_pb2_grpc.add_HealthServicer_to_server,
            yours)`` with ``yours`` a ``grpc_health.v1.health.aio.HealthServicer`` (or a
            subclass): it is served instead of meshkit's (see :attr:`health`).
        registry: where to register: a :class:`~meshkit.discovery.Registry` (left open
            by :meth:`drain`: yours to close), or a registry URI as ``MESHKIT_REGISTRY``
            takes (``"local:///var/lib/meshkit"``, ``"consul://127.0.0.1:8500"``:
            :func:`meshkit.discovery.registry_from_uri`); default
            :func:`meshkit.discovery.registry_from_env`. A registry built from a URI or
            the environment is owned and closed by the server.
        options: :class:`ServeOptions`.

    Attributes:
        health: the ``grpc.health.v1`` servicer the server answers with, a
            ``grpc_health.v1.health.aio.HealthServicer``: meshkit's own, or from
            :meth:`start` on yours when ``servicers`` include one. Set the statuses of
            your own checks on it (``await server.health.set("db", NOT_SERVING)``, e.g.
            in ``serve()``'s ``on_started``). :meth:`start` sets ``SERVING`` for ``""``
            (the whole server), the mesh service name (what Consul's gRPC check asks)
            and every service the server serves, except the names the servicer
            already has a status for (set before :meth:`start`, on your own servicer or
            on meshkit's, this attribute: left as you set them, e.g. ``NOT_SERVING``
            while warming up; the reference servicer has ``""`` ``SERVING`` from the
            start). While ``""`` or the mesh service name is not ``SERVING`` the
            instance is out of the registry (``ServeOptions.follow_health``). :meth:`drain`
            sets every status ``NOT_SERVING`` (``enter_graceful_shutdown()``: later
            ``set()`` calls are ignored), then ends the open ``Watch`` streams. Give a
            servicer to one server only: the first drain sets it ``NOT_SERVING`` for
            good.
        drain_refused: calls of mesh clients the drain refused before it stopped (see
            :meth:`drain`); not seen by telemetry (no code of theirs ran), logged with
            ``stopped``.

    Transport security is required: ``options.tls``, other ``credentials``, or
    ``MESHKIT_CERT_DIR`` (the service's own certificate); plaintext only with
    ``ServeOptions(insecure=True)``, and then logged as a warning.

    Raises:
        ConfigError: bad ``service`` name or options (``options`` not a
            :class:`ServeOptions`: a ``DialOptions``, say; an ``advertise_host`` that is
            the unspecified address, ``"0.0.0.0"`` or ``"::"``; an ``instance_id``,
            ``tags`` or ``meta`` the registry's :class:`~meshkit.discovery.Instance`
            refuses: a lone surrogate, a ``weight`` past ``2**63 - 1``), ``servicers``
            that are not ``(add_XServicer_to_server, servicer)`` pairs, a bad registry URI or a
            ``registry`` without ``register()``/``deregister()`` (a class instead of an
            instance, say), or no transport security configured and ``insecure`` not
            asked for; from :meth:`start`, before binding: a health servicer meshkit
            cannot drive (not a ``grpc_health.v1.health.aio``
            ``HealthServicer``: the synchronous ``health.HealthServicer``, one of your
            own making) or two health servicers in ``servicers``.
        CertificateError: with ``tls``, a certificate every meshkit client of ``service``
            would refuse: another workload's, or one without the DNS SAN
            ``<service>.svc.<td>`` clients verify (a SPIRE SVID with only its URI SAN);
            see :func:`meshkit.auth.check_server_identity`.
        RegistryError: (from :meth:`start`) the registry refused the registration.
        RuntimeError: (from :meth:`start`) the port cannot be bound.
    """

    # Default instance ids held by this process's servers, from start() until drain()
    # deregisters them; reserved before start()'s first await, so that two servers
    # starting at once differ too.
    _ids_in_use: set[str] = set()

    def __init__(
        self,
        service: str,
        servicers: Sequence[tuple[AddServicer, Any]] = (),
        *,
        registry: Registry | str | None = None,
        options: ServeOptions | None = None,
    ) -> None:
        if options is not None and not isinstance(options, ServeOptions):
            # named by its type only: an options object's repr may carry credentials
            raise ConfigError(f"serve({service!r}): options must be a ServeOptions, got a "
                              f"{type(options).__qualname__}" + (
                                  " (DialOptions are dial()'s)"
                                  if type(options).__name__ == "DialOptions" else ""))
        self.service = service
        self.options = options or ServeOptions()
        opts = self.options
        # Validate now what start() registers (Instance checks it: the name, an id, tags
        # or meta that are no UTF-8, a weight past 2**63 - 1), with a placeholder
        # address: found at start(), only after binding and serving
        Instance(service=service, instance_id=opts.instance_id or "validate",
                 host="localhost", port=1, tags=opts.tags, meta=opts.meta,
                 weight=opts.weight)
        if opts.advertise_host is not None and is_unspecified(opts.advertise_host):
            # registered, every caller would dial its own host (Consul refuses to
            # advertise these too: "Advertise address cannot be 0.0.0.0, :: or [::]")
            raise ConfigError(
                f"serve({service!r}): advertise_host {opts.advertise_host!r} is the "
                "unspecified address, which no caller can reach this server at: give "
                "the address or name callers dial, or leave it unset to register the "
                "host name when binding all interfaces")
        if opts.tls is None and opts.credentials is None and not opts.insecure:
            cert_dir = env_value(CERT_DIR)  # stripped; blank: unset
            if not cert_dir:
                raise ConfigError(
                    f"serve({service!r}): no transport security configured: pass "
                    "ServeOptions(tls=TLSOptions(...)), or set MESHKIT_CERT_DIR "
                    f"(meshkit certs issue {service}), or ask for plaintext with "
                    "ServeOptions(insecure=True)")
            self.options = dataclasses.replace(opts, tls=tls_from_dir(cert_dir, service))
        if self.options.tls is not None:  # a certificate every client would refuse: not up
            check_server_identity(self.options.tls, service)
        self._servicers = _servicer_pairs(service, servicers)
        self._chain = server_chain(self.service, self.options)
        self._deadline = next((i for i in self._chain if isinstance(i, DeadlineInterceptor)),
                              None)
        # the limiter of rate_limit (the chain's first RateLimitInterceptor: server_chain
        # puts it before options.interceptors): its evictions are in stats()
        self._rate_limiter = next(
            (i.limiter for i in self._chain if isinstance(i, RateLimitInterceptor)
             and isinstance(i.limiter, StorageLimiter)), None
        ) if self.options.rate_limit is not None else None
        if registry is None:
            self.registry, self._owns_registry = registry_from_env(), True
        else:
            self.registry, self._owns_registry = registry_argument(
                f"serve({service!r})", registry, ("register", "deregister"))
        if (self.options.tls is not None
                and getattr(self.registry, "plaintext_health_checks", False) is True):
            # the agent's plaintext handshake fails on this TLS port: the check goes
            # critical at its first run, the instance out of every watch, then reaped
            check = getattr(getattr(self.registry, "options", None), "check", "grpc")
            raise ConfigError(
                f"serve({service!r}): this server serves TLS, but its registry's gRPC "
                f"health check (check={check!r}) is made in plaintext "
                "(grpc_use_tls=False), which no TLS port answers: the instance would turn "
                "critical at the first check; set ConsulOptions(grpc_use_tls=True) "
                "(?grpc_use_tls=true in a consul:// URI) with an agent certificate "
                "this server trusts, or use check='ttl'")
        self.health: health.aio.HealthServicer = _MeshHealthServicer()
        self._kept_statuses: frozenset[str] = frozenset()  # set before start(): see start()
        self._watches = _HealthWatches()
        self.service_names: list[str] = []
        self.instance: Instance | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        # runs the plain-function handlers (ServeOptions.handler_threads), from start()
        # until the drain ends or a failed start is undone
        self._handler_threads: HandlerThreads | None = None
        self._stopped = asyncio.Event()
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None  # drain()'s work, see there
        self._drain_forced = False  # a second signal ended the drain (_end_drain_now)
        # time.monotonic() from which the drain's stop ends the calls still in flight
        # (grpc core's cancel-all: callers get UNAVAILABLE), see _calls_cut
        self._cut_at: float | None = None
        # start() between binding and returning (or undoing itself): drain() leaves the
        # server to it, see drain()
        self._starting = False
        self._registering: Instance | None = None  # what start() registers, until it returns
        # ServeOptions.follow_health: the task following the health status, from start()
        # until the drain; _withdrawn while the instance is out of the registry for it
        self._health_follower: asyncio.Task[None] | None = None
        self._withdrawn = False
        # from start() until the server stops: stops it when its loop ends undrained
        self._loop_end_watch: _LoopEndWatch | None = None
        # grpc.aio's pending request states, kept from a cancel of every task until the
        # server is gone (_pin_request_states)
        self._pinned_request_states: list[object] = []
        self.admin: AdminServer | None = None
        self._admin_registry: CollectorRegistry | None = None  # what it serves for us
        self.gate: RequestGate | None = None
        # max_concurrent_rpcs without the gate (ServerLimits(read_requests=False))
        self.call_slots: CallSlots | None = None
        self._tls_handshakes = 0
        self._table: _MethodTable | None = None  # what the drain makes refuse new calls
        self.drain_refused = 0  # see the class docstring
        self._reserved_id: str | None = None
        # keeps the certificate gauges on the files on disk (see _follow_certificate)
        self._certificate_follower: asyncio.Task[None] | None = None
        # the TLS material new connections are served (the gauges show it): the files at
        # start, then each renewal the reloader or the follower took
        self._served_tls: TLSMaterial | None = None
        # _served_tls is set from grpc's core threads (the reloader) and the loop (the
        # follower): under this lock, each change counted in _served_changes
        self._served_lock = threading.Lock()
        self._served_changes = 0

    def add(self, add_fn: AddServicer, servicer: Any) -> None:
        """Add a servicer before :meth:`start`, e.g. ``add(add_FooServicer_to_server, Foo())``."""
        if self._server is not None:
            raise RuntimeError("add servicers before start()")
        self._servicers.extend(_servicer_pairs(self.service, [(add_fn, servicer)]))

    async def start(self) -> Instance:
        """Bind, start serving, set health SERVING and register; returns the instance.

        With ``ServeOptions.follow_health`` (the default) the registration then follows
        the health status: withdrawn while :attr:`serving` is false, registered again
        once it is true (a server ``NOT_SERVING`` already here, warming up, is registered
        only then; the instance returned is the one it will register).

        The calls served start without meshkit's per-call context variables, whatever
        the code that awaits ``start()`` set: started from a handler, the server does not
        hand that handler's caller identity (``current_claims()``, ``current_peer()``, the
        token ``TokenForwarder`` sends) or deadline to its own callers, nor does a
        ``deadline_scope`` around ``start()`` reach them. The application's own context
        variables (``structlog.contextvars`` bound at start-up) reach them as on a plain
        grpc.aio server (the admin server's requests alike).

        When a step after binding fails (the registration refused, the admin port taken,
        or ``start()`` cancelled), the server is undone before the error is re-raised: the
        grpc server is stopped, its interceptors closed as at a drain (those with an
        ``aclose()``: the refusals counted since it bound are logged, connections
        closed), the admin server released, a registry the server owns
        closed, the registration withdrawn when it was under way (a cancelled or failed
        registration may have been written anyway; withdrawing it waits at most
        ``_UNDO_DEREGISTER_S``); the server is then neither :attr:`ready` nor :attr:`live`
        (``/readyz`` does not count it), :meth:`drain` returns at once and
        :meth:`wait_stopped` returns. Build a new :class:`MeshServer` to try again. A start
        that fails before binding (a health servicer refused, the address in use) leaves
        nothing bound and the server stopped the same way.

        When :meth:`drain` is called while ``start()`` runs, ``start()`` stops at its next
        step and is undone as above (nothing stays registered), then raises
        ``RuntimeError``; that :meth:`drain` returns once the undoing is done.

        A started server never drained before its event loop ends (``asyncio.run()``
        returning or raising) is stopped and deregistered as the loop ends, with a
        warning (:meth:`_stop_at_loop_end`): :meth:`drain` it before. A task of yours
        that cancels every other task (a shutdown recipe) does not end the loop: drain
        the server after it as usual.

        A server starts once: a second ``start()`` (while the first runs, once it has
        returned, after :meth:`drain` or after a failed start) raises ``RuntimeError``
        and changes nothing; the server keeps its port, instance and registration.

        Raises:
            ConfigError: (before binding) a health servicer in the servicers meshkit
                cannot drive, or two (see :class:`MeshServer`); a method pattern of the
                server's settings (``AuthzPolicy.rules``, ``JWTAuthOptions``,
                ``RateLimitOptions.rules``, ``quiet_methods``...) that names a method a
                service it serves does not have, a typo (quoted; patterns that match no
                method served otherwise are named in one warning:
                :func:`meshkit._methods.check_served`).
            RuntimeError: the server was started before (see above), the address cannot
                be bound, or :meth:`drain` was called while starting.
            RegistryError: registration failed (the server is stopped again).
        """
        self._refuse_second_start()
        opts = self.options
        if (opts.port and not _is_ip(bare_host(opts.host))
                and not dict(opts.server_options).get("grpc.so_reuseport")):
            try:
                await _refuse_a_port_in_use(opts.host, opts.port)
            except Exception:
                # the port another start() of this server bound meanwhile: say so
                self._refuse_second_start()
                self._end_before_binding()
                raise
            except BaseException:
                self._end_before_binding()
                raise
            self._refuse_second_start()  # (drained or started meanwhile)
        try:
            server, port = self._bind()
        except BaseException:
            self._end_before_binding()
            raise
        instance_id = self._reserve_instance_id(port)
        self._starting = True
        try:
            await self._start_and_register(server, instance_id, port)
        except BaseException:
            await self._undo_start(server)
            raise
        finally:
            self._starting = False
        assert self.instance is not None
        if self._follows_health() or self._withdrawn:  # (or to register it once SERVING)
            self._health_follower = asyncio.get_running_loop().create_task(
                self._follow_health(self.instance), name=f"meshkit-health-{self.service}")
        _log.info("serving", service=self.service, instance_id=self.instance.instance_id,
                  address=self.instance.address, services=self.service_names)
        return self.instance

    def _bind(self) -> tuple[grpc.aio.Server, int]:
        """:meth:`start`'s steps up to binding: the request gate, the chain, the handler
        threads, the grpc server with every servicer, health and reflection added, bound
        to ``host:port``; returns the server (not started) and the port bound.

        Raises:
            ConfigError: a health servicer meshkit cannot drive, or two.
            RuntimeError: the address cannot be bound.
        """
        opts = self.options
        # OTEL_* / MESHKIT_TRACE_FILE set up the global provider only for a telemetry
        # interceptor that traces to it (as dial() does): with the application's own
        # provider, or telemetry off, the global one is the application's to install
        if any(isinstance(icpt, TelemetryServerInterceptor) and icpt.options.tracing
               and icpt.options.tracer_provider is None for icpt in self._chain):
            tracing_from_env(self.service)
        limits = opts.limits
        if opts.maximum_concurrent_rpcs is not None:
            limits = dataclasses.replace(limits, max_concurrent_rpcs=opts.maximum_concurrent_rpcs)
        self.gate = RequestGate(limits) if limits.read_requests else None
        # without the gate, meshkit's own count in the fused wrap (its health reserve, the
        # nack, the count of sheds), never grpc.aio's cap (none of the three)
        self.call_slots = (CallSlots(limits.max_concurrent_rpcs)
                           if self.gate is None and limits.max_concurrent_rpcs is not None
                           else None)
        # the methods this server registers, filled in as the servicers are added (each
        # before its handler is resolved): telemetry labels these by name, any other
        # method a generic handler serves "other" (gRFC A66); the rate limiter counts
        # any other one under its rule's name (a caller's made-up names: one budget)
        known: set[str] = set()
        generic = MethodMatcher.of(opts.generic_methods, where="generic_methods")

        def registered(method: str) -> bool:
            return method in known or generic.lookup(method)

        for icpt in self._chain:  # its count of calls tells telemetry when it is alone
            if isinstance(icpt, TelemetryServerInterceptor):
                icpt.server_calls = None if self.gate is None else self.gate.calls
                icpt.registered = registered
                icpt.calls_cut = self._calls_cut
            elif isinstance(icpt, RateLimitInterceptor):
                icpt.registered = registered
        # a port in use is refused unless the user opts in (see ServeOptions.server_options)
        server_args: dict[str, Any] = {"grpc.so_reuseport": 0}
        server_args.update(limits.channel_args(opts.server_options))
        server_args.update(dict(opts.server_options))
        chain = self._interceptors()
        max_send = server_args.get("grpc.max_send_message_length")
        if type(max_send) is int and max_send >= 0:  # (-1: no limit, grpc's default)
            for icpt in chain:
                if isinstance(icpt, WrappingInterceptor):
                    icpt.max_send_bytes = max_send
        # The mesh's own chain only transforms each method's handler: apply it once per
        # method where handlers are looked up, and give grpc.aio no interceptor (it runs
        # every interceptor per call, a coroutine each, even for a cached handler).
        resolve = handler_resolver(chain)
        # the plain-function handlers' own threads (not the loop's default executor:
        # see ServeOptions.handler_threads); none started until a call needs one, so
        # one left behind by a bind that fails below holds nothing
        # (daemon threads: one still blocked past the drain does not hold the process's
        # exit, see meshkit._threads)
        self._handler_threads = HandlerThreads(
            max_workers=opts.handler_threads,
            thread_name_prefix=f"meshkit-handler-{self.service}")
        server = grpc.aio.server(
            migration_thread_pool=self._handler_threads,
            # run per call, a plain handler a user's interceptor returns of its own is
            # meshkit's to run too (off_loop_outermost): grpc.aio's synchronous context
            # crashes the process when asked peer() once the call ended
            interceptors=(off_loop_outermost(chain) or None) if resolve is None else None,
            options=tuple(server_args.items()),
            compression=opts.compression,
        )
        recorder = _Recorder(server, resolve, register_methods=grpc_observability_active(),
                             known=known, watches=self._watches)
        yours: health.aio.HealthServicer | None = None
        for add_fn, servicer in self._servicers:
            add_fn(servicer, recorder)
            if health.SERVICE_NAME in recorder.take_added():
                yours = self._your_health(servicer, yours)
        # a reflection service of your own (say, over a descriptor pool of your own) is
        # the one served: meshkit adds none beside it
        own_reflection = [n for n in recorder.names if n in _REFLECTION_NAMES]
        self.service_names = [n for n in recorder.names
                              if n != health.SERVICE_NAME and n not in _REFLECTION_NAMES]
        if yours is None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, recorder)
        else:
            self.health = yours
        # the statuses set before start() (on your servicer or on meshkit's own,
        # MeshServer.health) are yours: start() leaves them as set
        statuses = getattr(self.health, "_server_status", None)
        self._kept_statuses = frozenset(statuses if isinstance(statuses, Mapping) else ())
        if opts.reflection and not own_reflection:
            # v1 is answered but not listed: grpcio-reflection has no v1 descriptor to
            # describe it with, and a client describes every service listed (grpcurl)
            names = list(dict.fromkeys(
                (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)))
            # (an idle stream ends as the stop begins, not after grace_s: the recorder
            # wraps the stream of every reflection servicer, see ending_reflection)
            servicer = reflection.aio.ReflectionServicer(
                names, pool=_MethodSymbols(descriptor_pool.Default()))
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, recorder)
            # the stable v1 service too (grpcurl and grpc-js ask it first; grpcio-reflection
            # serves only v1alpha): the same messages, field for field, under v1's name
            recorder.add_registered_method_handlers(_REFLECTION_V1, {
                "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                    servicer.ServerReflectionInfo,
                    request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                    response_serializer=reflection_pb2.ServerReflectionResponse
                    .SerializeToString)})
        self._table = recorder.install()
        self._check_patterns(known, recorder.any_name)
        # a method no handler serves: answered UNIMPLEMENTED as grpc.aio answers it, and
        # recorded (metrics as "other", an access line, a span: gRFC A66); added last, so
        # asked only when no other handler serves the call (with a per-call chain,
        # resolve is None, the chain's own intercept_service records it)
        unknown = unknown_methods_handler(chain) if resolve is not None else None
        if unknown is not None:
            server.add_generic_rpc_handlers((unknown,))
        bind = f"{uri_host(opts.host)}:{opts.port}"
        creds = (opts.tls.server_credentials(on_reload=self._certificate_reloaded,
                                             on_handshake=self._handshake_started,
                                             on_start=self._certificate_started)
                 if opts.tls is not None else opts.credentials)
        if creds is None:
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, creds)
        if not port:
            raise RuntimeError(f"cannot bind {bind!r}")
        self.port = port
        self._server = server
        track(self, kind="server")
        if creds is None:
            _log.warning("serving plaintext (no TLS)", service=self.service,
                         address=f"{uri_host(opts.host)}:{port}")
        return server, port

    def _check_patterns(self, served: set[str], any_name: bool) -> None:
        """Check the server's settings against the methods ``served``: each interceptor's
        own check (:meth:`WrappingInterceptor.check_methods`); then, unless a generic
        handler may serve ``any_name``, their method patterns
        (:func:`meshkit._methods.check_served`): a ``ConfigError`` for a typo'd method of
        a service served, one warning naming the patterns that match no method served
        (but ``quiet_methods``, which ``dial()`` shares)."""
        opts = self.options
        checks = [icpt for icpt in self._chain if isinstance(icpt, WrappingInterceptor)]
        for icpt in checks:
            icpt.check_methods(served)
        if any_name:  # any name may be served: no pattern can be told wrong
            return
        patterns = [p for icpt in checks for p in icpt.method_patterns()]
        if opts.rate_limit is not None:
            patterns.append(("RateLimitOptions.rules", tuple(opts.rate_limit.rules)))
        unmatched = check_served(patterns, served)
        if opts.telemetry is not None:  # (also the client's downstream methods)
            check_served((("TelemetryOptions.quiet_methods", opts.telemetry.quiet_methods),),
                         served)
        if unmatched:
            _log.warning("method patterns match no method this server serves",
                         service=self.service,
                         patterns=[f"{where}: {text}" for where, text in unmatched])

    def _end_before_binding(self) -> None:
        """A :meth:`start` that failed before its server was bound (a health servicer
        refused, the address in use, cancelled while checking it): stopped for good, as
        an undone start (:meth:`wait_stopped` returns, a later :meth:`start` raises
        ``RuntimeError``), its handler threads' pool shut down; nothing was bound or
        registered. Nothing when another :meth:`start` of the server has bound meanwhile
        (two at once: that one goes on)."""
        if self._starting or self._server is not None:
            return
        pool, self._handler_threads = self._handler_threads, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._close_gate()
        self._stopped.set()

    def _refuse_second_start(self) -> None:
        """Raise ``RuntimeError`` when :meth:`start` ran before on this server: a second
        one would bind and register a second instance and drop the first grpc server with
        its registration still renewed by the registry (listed for good, nobody
        listening), since :meth:`drain` withdraws the last one only.

        Raises:
            RuntimeError: started, starting, drained (or draining), or its start failed;
                the message says which.
        """
        if self.draining:
            raise RuntimeError(f"start() of {self.service!r} after drain(): a drained "
                               "MeshServer cannot start again; build a new one")
        if self._stopped.is_set():  # undone by a failed start (see start())
            raise RuntimeError(f"start() of {self.service!r} after a failed start(): "
                               "build a new MeshServer to try again")
        if self._starting or self._server is not None:
            raise RuntimeError(f"start() of {self.service!r}: already started")

    def _your_health(self, servicer: Any,
                     before: health.aio.HealthServicer | None) -> health.aio.HealthServicer:
        """``servicer``, whose ``add_*_to_server`` added ``grpc.health.v1.Health``, as the
        server's health servicer (see :class:`MeshServer`'s ``servicers``).

        Raises:
            ConfigError: a second one (``before``), or one meshkit cannot drive (not a
                ``grpc_health.v1.health.aio.HealthServicer``: the synchronous
                ``health.HealthServicer``, a servicer of your own making).
        """
        if before is not None:
            raise ConfigError(
                f"serve({self.service!r}): two grpc.health.v1.Health servicers "
                f"({type(before).__name__} and {type(servicer).__name__}); give one")
        if not isinstance(servicer, health.aio.HealthServicer):
            raise ConfigError(
                f"serve({self.service!r}): the grpc.health.v1.Health servicer "
                f"{type(servicer).__module__}.{type(servicer).__qualname__} cannot be "
                "driven by meshkit (SERVING once started, NOT_SERVING when draining): "
                "give a grpc_health.v1.health.aio.HealthServicer (or a subclass), or none "
                "and set your statuses on MeshServer.health (on_started)")
        return servicer

    def _reserve_instance_id(self, port: int) -> str:
        """The instance id (``ServeOptions.instance_id``'s rule), held in
        :attr:`_ids_in_use` until :meth:`drain` ends or :meth:`start` fails."""
        instance_id = self.options.instance_id
        if instance_id is None:
            hostname, pid = socket.gethostname(), os.getpid()
            instance_id = _default_instance_id(self.service, hostname, f"-{pid}")
            if instance_id in self._ids_in_use:
                base, n = f"-{pid}-{port}", 1
                instance_id = _default_instance_id(self.service, hostname, base)
                while instance_id in self._ids_in_use:  # another host, the same port
                    n += 1
                    instance_id = _default_instance_id(self.service, hostname, f"{base}-{n}")
            self._ids_in_use.add(instance_id)
            self._reserved_id = instance_id
        return instance_id

    def _release_instance_id(self) -> None:
        if self._reserved_id is not None:
            self._ids_in_use.discard(self._reserved_id)
            self._reserved_id = None

    async def _start_and_register(self, server: grpc.aio.Server, instance_id: str,
                                  port: int) -> None:
        """Start ``server``, set health SERVING, acquire the admin server and register;
        after each step, raise when :meth:`drain` was called meanwhile (the caller undoes
        the start)."""
        opts = self.options
        # every call runs in a copy of this context: its plain-function handler in the
        # server's threads (HANDLER_EXECUTOR)
        await _in_a_context_of_its_own(server.start(), f"meshkit-start-{self.service}",
                                       handlers=self._handler_threads)
        # from now on grpc.aio's request tasks hold the states grpc core points to: a
        # cancel of every task (the loop's end, a shutdown recipe) during the steps below
        # pins them as after start() (_LoopEndWatch), and the undo stops the server
        self._watch_loop_end(server)
        self._raise_if_draining()
        serving = health_pb2.HealthCheckResponse.SERVING
        # "" is the whole server; the mesh service name is what Consul's GRPC check asks.
        # (The servicer keeps the statuses you set on it before start().)
        for name in dict.fromkeys(("", self.service, *self.service_names)):
            if name not in self._kept_statuses:
                await self.health.set(name, serving)
        self._raise_if_draining()
        meta = dict(opts.meta)
        if opts.admin is not None:
            # /metrics serves the registry this server's metrics go to, beside those of
            # the other users of the shared admin server and the process default
            self._admin_registry = self._metrics_registry() or default_registry()
            self.admin = await _SharedAdmin.acquire(opts.admin, self._admin_registry)
            self._raise_if_draining()
            if self.admin is not None:
                meta.setdefault("admin_port", str(self.admin.port))
        if opts.tls is not None:
            with self._served_lock:  # the credentials' own (or a reload's since)
                if self._served_tls is not None:
                    self._publish_certificate(
                        x509.load_pem_x509_certificate(self._served_tls.cert_pem))
            self._certificate_follower = asyncio.get_running_loop().create_task(
                self._follow_certificate(opts.tls),
                name=f"meshkit-certificate-{self.service}")
        # registered bare ("::1", not "[::1]"): Instance.host is an address, which
        # Consul, etcd and span attributes take without brackets (RFC 3986 puts them on
        # host:port only)
        host = bare_host(opts.advertise_host) if opts.advertise_host else (
            socket.gethostname() if is_unspecified(opts.host) else bare_host(opts.host))
        if self.admin is not None:
            admin_host = bare_host(self.admin.options.host)
            # the admin server listens elsewhere than the registered host: say where
            # (meshkit services, prometheus-targets), unless it is this machine's loopback
            # while the host is not (nobody else could reach it there; a reader elsewhere
            # would find its own loopback)
            if (not is_unspecified(admin_host) and admin_host != host
                    and (is_loopback(host) or not is_loopback(admin_host))):
                meta.setdefault("admin_host", admin_host)
        instance = Instance(
            service=self.service,
            instance_id=instance_id,
            host=host,
            port=port,
            tags=opts.tags,
            meta=meta,
            weight=opts.weight,
        )
        if self.options.follow_health and not self.serving:
            # warming up (NOT_SERVING set before start()): registered once SERVING (with
            # a registry that checks the health itself too: it would list it passing)
            self._withdrawn = True
            _log.info("not serving: registered once SERVING", service=self.service,
                      instance_id=instance_id)
        else:
            self._registering = instance
            await self.registry.register(instance)
            self._raise_if_draining()
            self._registering = None
        self.instance = instance

    def _follows_health(self) -> bool:
        """Whether the registration follows the health status
        (``ServeOptions.follow_health``, unless the registry checks the instance's gRPC
        health itself: its ``checks_instance_health`` is ``True``)."""
        return (self.options.follow_health
                and getattr(self.registry, "checks_instance_health", False) is not True)

    async def _follow_health(self, instance: Instance) -> None:
        """Withdraw ``instance`` from the registry while :attr:`serving` is false, and
        register it again once it has been true for ``readmit_after_s`` with no status
        set meanwhile (``ServeOptions.follow_health``). Runs from :meth:`start` until the
        drain cancels it; woken by the servicer's own ``Watch`` of ``""`` and the mesh
        service name (:meth:`_watch_status`), and every :data:`_HEALTH_RECHECK_S`
        besides (a servicer whose ``Watch`` cannot be followed). A registry write that
        fails is logged and tried again :data:`_HEALTH_RETRY_S` later, the wait doubling
        after each failure in a row up to :data:`_HEALTH_RETRY_MAX_S`."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        watchers = [loop.create_task(self._watch_status(name, changed),
                                     name=f"meshkit-health-watch-{self.service}")
                    for name in dict.fromkeys(("", self.service))]
        readmit_s = self.options.readmit_after_s
        serving_since: float | None = None
        retry_s = _HEALTH_RETRY_S
        try:
            while not self.draining:
                changed.clear()  # (a status set during a write below: looked at at once)
                wait_s = _HEALTH_RECHECK_S
                if not self.serving:
                    serving_since = None
                    if self._withdrawn:
                        pass
                    elif await self._health_write("withdrawing",
                                                  self.registry.deregister(instance)):
                        self._withdrawn, retry_s = True, _HEALTH_RETRY_S
                        _log.warning("not serving: withdrawn from the registry until "
                                     "SERVING", service=self.service,
                                     instance_id=instance.instance_id)
                    else:
                        wait_s, retry_s = retry_s, min(2 * retry_s, _HEALTH_RETRY_MAX_S)
                elif self._withdrawn:
                    now = loop.time()
                    serving_since = now if serving_since is None else serving_since
                    if now - serving_since < readmit_s:
                        wait_s = min(wait_s, serving_since + readmit_s - now)
                    elif await self._health_write("registering",
                                                  self.registry.register(instance)):
                        self._withdrawn, retry_s = False, _HEALTH_RETRY_S
                        _log.info("serving again: registered", service=self.service,
                                  instance_id=instance.instance_id)
                        if not self._follows_health():
                            return  # the registry checks the health from now on
                    else:
                        wait_s, retry_s = retry_s, min(2 * retry_s, _HEALTH_RETRY_MAX_S)
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # comes as the wait ends (asyncio.run()'s sweep of a main that raised:
                # the process hung on uvloop)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await changed.wait()
                    serving_since = None  # a status set: SERVING holds from now
        finally:
            for watcher in watchers:
                watcher.cancel()

    async def _health_write(self, what: str, write: Awaitable[None]) -> bool:
        """Await ``write`` (the registration or its withdrawal, bounded by
        :data:`_DRAIN_DEREGISTER_S`); ``False``, logged, when it failed."""
        try:
            await _bounded(write, _DRAIN_DEREGISTER_S)
        except Exception as exc:
            _log.warning(f"{what} for the health status failed", service=self.service,
                         error=str(exc) or repr(exc))
            return False
        return not self.draining  # (the drain goes on with its own deregistration)

    async def _watch_status(self, name: str, changed: asyncio.Event) -> None:
        """Set ``changed`` at each status of ``name`` the health servicer's ``Watch``
        sends (the reference servicer's, or yours: a coroutine writing to its context
        or an async generator); a ``Watch`` that fails or ends leaves the follower to
        its periodic check."""
        ctx = _StatusSink(changed)
        try:
            answer = self.health.Watch(health_pb2.HealthCheckRequest(service=name), ctx)
            if inspect.isasyncgen(answer):
                async for _ in answer:
                    changed.set()
            elif inspect.isawaitable(answer):
                await answer
        except Exception as exc:
            _log.debug("health watch not followed", service=self.service, name=name,
                       error=repr(exc))

    async def _stop_following_health(self) -> None:
        """End the health follower (the drain's first step: it withdraws the instance
        for good); a write of it under way is cancelled (the registries undo a
        cancelled registration; the drain deregisters after this anyway)."""
        follower = self._health_follower
        if follower is not None:
            await cancel_and_wait(follower)

    def _watch_loop_end(self, server: grpc.aio.Server, replaceable: bool = True) -> None:
        """Start the task that stops ``server`` if its event loop ends undrained
        (:meth:`_stop_at_loop_end`, a :class:`_LoopEndWatch`); also its replacement when
        a task of the loop cancelled it (``replaceable`` ``False``: that one is not
        replaced in turn, so a shutdown that cancels every other task until none is left
        ends), unless the server is draining or stopped."""
        if self.draining or self._stopped.is_set():
            return
        loop = asyncio.get_running_loop()
        self._loop_end_watch = _LoopEndWatch(
            self._stop_at_loop_end(server), loop=loop,
            name=f"meshkit-loop-end-{self.service}",
            on_cancel=functools.partial(self._pin_request_states, server, loop),
            replace=functools.partial(self._watch_loop_end, server, False)
            if replaceable else None)

    def _pin_request_states(self, server: grpc.aio.Server,
                            loop: asyncio.AbstractEventLoop) -> None:
        """Keep grpc.aio's pending request states of ``server`` alive until the server
        is gone: called when the loop-end watch is cancelled, in the canceller's step,
        before the tasks cancelled with it run (:func:`_request_states`)."""
        self._pinned_request_states += _request_states(server, loop)

    async def _stop_at_loop_end(self, server: grpc.aio.Server) -> None:
        """From :meth:`start`'s grpc server start until the server stops (cancelled while
        the start is still under way, its ``cancel()`` pins grpc.aio's request states and
        the rest is left to the start's undo, cancelled alike): when this task is
        cancelled by its event loop's end while no drain has begun (``asyncio.run()``
        cancels the tasks left: a ``main`` that returned or raised after :meth:`start`
        without :meth:`drain`), the server is taken out of the mesh as that loop ends, as a
        channel still open then is closed: warning ``server not drained before its event
        loop ended``, health ``NOT_SERVING``, the instance deregistered (at most
        :data:`_UNDO_DEREGISTER_S`), the grpc server stopped without grace (the loop's
        end has cancelled its calls' handlers), then the drain's last steps
        (:meth:`_close_after_stop`: interceptors closed, admin server released, an owned
        registry closed, :meth:`wait_stopped` returns). Before, the instance stayed
        listed until its TTL or lease ran out, and the grpc.aio server, never stopped,
        hung the process for good when the garbage collector collected it after its
        loop had closed (grpc's completion queue shut down around a server still
        running). A drain begun in the same sweep (a cancelled :func:`serve` drains
        itself) is left to run as it does. Nothing per call.

        Cancelled by a task of the loop (the "cancel every other task, then
        :meth:`drain`" shutdown recipe), it ends without stopping anything and another
        takes its place (:class:`_LoopEndWatch`): that cancel is not the loop's end, and
        the drain that follows drains with its ``drain_delay_s`` and ``grace_s``."""
        try:
            await self._stopped.wait()
            return
        except asyncio.CancelledError:
            watch = asyncio.current_task()
            if self.draining or self._starting or not (isinstance(watch, _LoopEndWatch)
                                                       and watch.loop_ending):
                raise  # (a start under way: its undo, cancelled alike, stops the server)
            # one turn: the tasks the sweep cancelled with this one (a serve() drains
            # itself) run their first step, so a drain they begin is theirs
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            if self.draining:
                raise
            self.draining = True
            _log.warning("server not drained before its event loop ended; stopped now "
                         "(drain() before the loop ends)", service=self.service,
                         instance_id=self.instance.instance_id if self.instance else None)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("stopping the health follower", self._stop_following_health),
                ("setting health NOT_SERVING", self.health.enter_graceful_shutdown)]
            instance = self.instance
            if instance is not None:
                steps.append(("deregistering", lambda: _bounded(
                    self.registry.deregister(instance), _UNDO_DEREGISTER_S)))
            steps += [("stopping the certificate follower",
                       self._stop_following_certificate),
                      ("stopping the server", lambda: _stop_server(server, None))]
            try:
                await _each_step(steps, " as the event loop ended", through_cancel=True)
                self._withdrawn = True  # (stats().registered)
            finally:
                self._release_instance_id()
                await self._close_after_stop()
            raise

    def _raise_if_draining(self) -> None:
        """Raise ``RuntimeError`` when :meth:`drain` was called during :meth:`start`."""
        if self.draining:
            raise RuntimeError(f"start() of {self.service!r} stopped: drain() was called "
                               "while it ran")

    async def _undo_start(self, server: grpc.aio.Server) -> None:
        """Undo a :meth:`start` that failed after binding: back to not started (not
        ready, not live), the registration under way withdrawn (deregistering an
        instance that is not registered does nothing; waits at most
        ``_UNDO_DEREGISTER_S``), the grpc server stopped, its interceptors closed as at
        a drain (the calls it served before the failure may have left counts to log,
        refusals, and connections open), the admin server released, an owned registry
        closed (:meth:`_after_stop_steps`); then its default instance id given back
        (held until the withdrawal is done, as a drain holds it) and the server stopped
        (:meth:`wait_stopped` and a :meth:`drain` waiting for the start return). A step
        that fails is logged; the
        start's own error is what the caller sees. Cancelled while it runs (the undo of a
        cancelled start cancelled again), the step under way is cancelled (a withdrawal
        with its request) and the others still run, then ``CancelledError`` is raised."""
        self.instance = None
        self._server = None
        registering, self._registering = self._registering, None
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("stopping the certificate follower", self._stop_following_certificate)]
        if registering is not None:
            steps.append(("withdrawing the registration",
                          lambda: _bounded(self.registry.deregister(registering),
                                           _UNDO_DEREGISTER_S)))
        # (_stop_server: grpc.aio's serving task may have been cancelled with the start)
        steps.append(("stopping the server", lambda: _stop_server(server, 0)))
        try:  # cancelled again meanwhile (a start() under a timeout, then Ctrl-C): each
            # step still runs, or the server stayed bound and the admin server held
            await _each_step([*steps, *self._after_stop_steps()], " after a failed start",
                             through_cancel=True)
        finally:
            # only now: another server of the service started meanwhile would take the
            # id, register it, and have it withdrawn by the step above
            self._release_instance_id()
            self._close_gate()
            self._stopped.set()

    def _after_stop_steps(self) -> list[tuple[str, Callable[[], Any]]]:
        """The steps once the grpc server has stopped, in a drain and in an undone
        :meth:`start` alike: close each interceptor of the chain with an ``aclose()``
        (a user's resources, the rate limiter's storage connections, the refusal counts
        the auth interceptors have not logged yet; see ``ServeOptions.interceptors``),
        then give back what :meth:`start` took from the process: the handler threads
        (:meth:`_release_handler_threads`), the shared admin server (released once), an
        owned registry (closed). A server stops once (a drain after an undone start
        returns at once), so each runs once."""
        steps: list[tuple[str, Callable[[], Any]]] = [
            # each bounded: a close that never returns (a pool closing against a database
            # that stopped answering) must not hold the drain and the steps after it
            ("closing an interceptor", functools.partial(_bounded_close, aclose))
            for aclose in (  # e.g. Redis connections
                getattr(icpt, "aclose", None) for icpt in self._chain) if aclose is not None]
        steps.append(("releasing the handler threads", self._release_handler_threads))
        if self.admin is not None:
            self.admin = None
            steps.append(("releasing the admin server",
                          lambda: _SharedAdmin.release(self._admin_registry)))
        if self._owns_registry:
            steps.append(("closing the registry", self.registry.close))
        return steps

    async def _release_handler_threads(self) -> None:
        """Once the grpc server has stopped: shut the handler threads' pool down without
        waiting (a handler still blocked past ``grace_s`` keeps its thread until it
        returns; calls still queued for a thread are dropped, their calls ended by the
        stop). Safe to call twice."""
        pool, self._handler_threads = self._handler_threads, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """The server's interceptors: the chain fused, the request gate outermost (folded
        into the fused checks when they come first: one interceptor per call); without the
        gate, the call slots' check first in the fused checks."""
        if self.call_slots is not None:
            return fuse_interceptors((self.call_slots, *self._chain))
        chain = fuse_interceptors(self._chain)
        if self.gate is None:
            return chain
        return fold_outermost(chain, self.gate, self.gate.convert_for)

    def _handshake_started(self) -> None:
        """Count a TLS handshake (called by grpc's certificate fetcher on a core thread)."""
        self._tls_handshakes += 1

    def _certificate_started(self, material: TLSMaterial) -> None:
        """The material the server credentials start with (the files as they read them)."""
        with self._served_lock:
            self._served_tls = material
            self._served_changes += 1

    def _certificate_reloaded(self, material: TLSMaterial) -> None:
        """Keep the certificate gauges on the renewed certificate (called by the TLS
        reloader on a grpc core thread)."""
        with self._served_lock:
            self._served_tls = material
            self._served_changes += 1
            self._publish_certificate(x509.load_pem_x509_certificate(material.cert_pem))

    async def _follow_certificate(self, tls: TLSOptions) -> None:
        """Keep the certificate gauges on the certificate on disk, within
        ``tls.reload_interval_s`` of a renewal: every interval, when a file changed (size,
        mtime or inode of the CA bundle, certificate or key; at the first interval
        whatever they show, as a renewal may have landed since the credentials read
        them while the start went on), read them as the TLS reloader
        does (off the event loop) and publish the validity period of the pair now served
        to new connections. The reloader publishes it too, but only before a new
        connection's handshake, which clients that keep their connections (hours, for
        gRPC) may not make: the gauges kept the old notAfter, and
        ``MeshkitCertificateExpiringSoon`` fired although the renewal had happened. Files
        that are unreadable or do not match (mid-renewal: the key written, not the
        certificate yet), and a renewal the reloader would skip (expired or not valid yet,
        another SPIFFE ID, the identity DNS name or serverAuth dropped:
        :func:`~meshkit.auth._tls.check_renewal`), are read again at the next interval:
        the gauges stay on the certificate still served, so an expiry alert is not hidden
        by a notAfter no handshake presents. Runs until cancelled (:meth:`drain`)."""
        paths = (tls.ca_file, tls.cert_file, tls.key_file)
        # nothing seen yet: the first interval reads the files (a renewal written since
        # the credentials read them, while start() went on, would stat as seen)
        seen: tuple[tuple[int, int, int], ...] = ()
        while True:
            await asyncio.sleep(tls.reload_interval_s)
            now = stat_files(paths)
            if now == seen:
                continue
            try:
                changes = self._served_changes
                material = await asyncio.to_thread(tls.read)
                with self._served_lock:
                    if self._served_changes != changes:
                        # the reloader took a renewal while these files were read: judge
                        # them against it at the next interval, never publish an older one
                        continue
                    if self._served_tls is not None:
                        check_renewal(self._served_tls, material, tls.cert_file,
                                      server=True, now=time.time())
                    self._served_tls = material
                    self._served_changes += 1
                    self._publish_certificate(
                        x509.load_pem_x509_certificate(material.cert_pem))
            except Exception as exc:  # CertificateError mid-renewal or skipped: again next interval
                _log.debug("certificate files changed but are not served",
                           service=self.service, error=str(exc))
                continue
            seen = now

    async def _stop_following_certificate(self) -> None:
        """End :meth:`_follow_certificate` (if started) and wait for it."""
        task, self._certificate_follower = self._certificate_follower, None
        if task is not None:
            await cancel_and_wait(task)

    def _publish_certificate(self, cert: x509.Certificate) -> None:
        """Publish ``cert``'s validity period: ``meshkit_certificate_expiry_timestamp_seconds``
        (notAfter) and ``meshkit_certificate_not_before_timestamp_seconds`` (notBefore),
        which ``MeshkitCertificateExpiringSoon`` compares (a third of the lifetime left),
        rendered at scrape while this server is live (:func:`publish_certificate`): a
        server that stops leaves them, with nothing to withdraw (while another live server
        of the service publishes into the same registry, they show the certificate
        published last)."""
        info = describe_certificate(cert)
        publish_certificate(self, self.service, info.not_before.timestamp(),
                            info.not_after.timestamp(), registry=self._metrics_registry())

    def _metrics_registry(self) -> Any:
        """Where this server's metrics go (and ``/metrics`` serves): its telemetry's
        registry, else ``None`` (the process default)."""
        telemetry = self.options.telemetry
        return telemetry.registry if telemetry is not None else None

    async def drain(self) -> None:
        """Leave the mesh: NOT_SERVING, deregister (waiting 10 s at most:
        ``_DRAIN_DEREGISTER_S``), wait ``drain_delay_s``, refuse mesh
        clients' new calls of unary-response methods until they
        stop arriving (every such method but the health service's: ``UNAVAILABLE``
        "server draining: call refused before it ran" with the nack trailer
        ``meshkit-nack: 1``, which mesh clients retry on another endpoint whatever the
        method; until no call came for 0.05 s (in a window the server's loop was not
        held up through), 0.5 s at most; counted in
        :attr:`drain_refused`; their streaming-response calls and other gRPC clients'
        calls are served; see :meth:`_refuse_new_calls`), then stop (grpc's GOAWAY) with
        ``grace_s`` for in-flight calls, ending the health ``Watch`` streams as the stop
        begins (each sent ``NOT_SERVING`` first, unless it was already, then ended
        ``OK``: a watch never ends by itself and would hold the stop for the whole
        ``grace_s``; ended earlier, a client with client-side health checking re-opened
        it at once, again and again, until the GOAWAY), and the server reflection
        streams waiting for their next request (ended ``OK``). The drain runs to
        its end even when this ``drain()`` is cancelled (e.g. by ``wait_for``), so the
        server never stays deregistered but serving; its own task cancelled (the sweep of
        ``asyncio.run()`` at the end of a run), at any step, it still stops the server
        (``grace_s`` skipped) and closes it. A health servicer's
        ``enter_graceful_shutdown()`` that fails (an ``Exception``, or a
        ``CancelledError`` of its own while the drain was not cancelled) is logged and
        the drain goes on. Safe to call twice: a second call waits for the
        first to finish. Returns at once on a server that is not serving (never started,
        or its :meth:`start` failed and was undone), which is then stopped for good: a
        later :meth:`start` raises ``RuntimeError`` (as grpc-go's ``Serve()`` after
        ``Stop()``: a drain that raced ahead of the start does not leave a server serving
        and registered that nobody stops) and :meth:`wait_stopped` returns. Called while
        :meth:`start` runs, it makes that start stop and undo itself (see there) and
        returns once it has."""
        if self.draining:
            await self._stopped.wait()
            return
        if self._starting:  # start() owns the server until it returns: it undoes itself
            self.draining = True
            await self._stopped.wait()
            return
        server = self._server
        if server is None:  # never started (or its start failed before binding): it
            # never will, as grpc-go's Serve() after Stop(), and wait_stopped() returns
            self.draining = True
            self._stopped.set()
            return
        self.draining = True
        self._drain_task = task = asyncio.get_running_loop().create_task(
            self._drain(server), name=f"meshkit-drain-{self.service}")
        if self._drain_forced:  # a second signal came before the drain began
            # after the task's first step: a task cancelled before it runs never enters
            # its coroutine (no finally: the server would stay unstopped)
            task.get_loop().call_soon(task.cancel)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # the drain's task cancelled by _end_drain_now (it still stopped and closed
            # the server): the drain ended, not this call cancelled
            me = asyncio.current_task()
            if not (self._drain_forced and task.done()
                    and (me is None or not me.cancelling())):
                raise

    def _end_drain_now(self, sig: signal.Signals) -> None:
        """The same SIGTERM/SIGINT again while draining (or while the first one's drain
        is about to begin): end the drain now, as uvicorn's and gunicorn's second Ctrl-C
        or Kubernetes' SIGKILL after the grace. The drain's task is cancelled: the step
        under way stops (deregistration, ``drain_delay_s``, the refusal phase or the
        ``grace_s`` wait), the grpc server is stopped without grace (in-flight calls end
        ``UNAVAILABLE``, and telemetry records them so: :meth:`_calls_cut`) and closed as
        a cancelled drain is, and :meth:`drain` returns.
        A deregistration not done by then is tried once more after the stop, for
        :data:`_FORCED_DEREGISTER_S` at most (:meth:`_deregister_after_forced_stop`).
        Logged (warning); any signal after it is only logged ("already ending it")."""
        if self._drain_forced:
            _log.warning("signal during the drain: already ending it", service=self.service,
                         signal=sig.name)
            return
        self._drain_forced = True
        _log.warning("signal during the drain: ending it now, in-flight calls cancelled "
                     "UNAVAILABLE", service=self.service, signal=sig.name,
                     grace_s=self.options.grace_s)
        task = self._drain_task
        if task is not None and not task.done():
            # soon, not now: a drain task not yet started would never run its finally
            task.get_loop().call_soon(task.cancel)

    async def _drain(self, server: grpc.aio.Server) -> None:
        """:meth:`drain`'s steps, in a task of their own that its caller's cancellation
        does not reach."""
        opts = self.options
        _log.info("draining", service=self.service, drain_delay_s=opts.drain_delay_s,
                  grace_s=opts.grace_s)
        stopped = False
        try:
            # first: the follower neither withdraws (NOT_SERVING below) nor registers again
            await self._stop_following_health()
            try:  # (a servicer of yours may override it) keep draining: NOT_SERVING or
                # not, the deregistration and the stop still take the server out of the mesh
                await self.health.enter_graceful_shutdown()
            except Exception as exc:
                _log.warning("health enter_graceful_shutdown failed", service=self.service,
                             error=repr(exc))
            except asyncio.CancelledError as exc:
                # the override's own (a future it awaited, cancelled by its owner), not
                # this task cancelled: drain on, as for any other error
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                _log.warning("health enter_graceful_shutdown failed", service=self.service,
                             error=repr(exc))
            if self.instance is not None:
                try:  # bounded: a registry that hangs must not keep the server serving
                    await _bounded(self.registry.deregister(self.instance),
                                   _DRAIN_DEREGISTER_S)
                    self._withdrawn = True  # (stats().registered)
                except Exception as exc:  # keep draining; the TTL will expire the entry
                    _log.warning("deregister failed", error=str(exc) or repr(exc))
            self._release_instance_id()
            await self._stop_following_certificate()
            await asyncio.sleep(opts.drain_delay_s)
            await self._refuse_new_calls()
            self._cut_at = time.monotonic() + opts.grace_s  # the grace's end cuts the rest
            stop = asyncio.ensure_future(_stop_server(server, opts.grace_s))
            # the health watchers have been told NOT_SERVING: their calls end once the
            # stop has begun (its first step, run by this sleep, sends the GOAWAY and
            # closes the listener), so that grace_s is the in-flight calls' only (a
            # Watch never ends by itself). Not before: a client with client-side
            # health checking (gRFC A17) re-opens at once a Watch that ended after a
            # message, and was answered NOT_SERVING and ended again, in a loop until
            # the GOAWAY. (Cancelled, awaiting the stop cancels it too, as before.)
            await asyncio.sleep(0)
            self._watches.end()
            await stop
            stopped = True
        finally:
            # Also when the steps above were cancelled: asyncio.run()'s sweep at the end
            # of a run cancels this task and grpc.aio's own server tasks alike (a serve()
            # task left running), and the server must still end stopped, closed and out
            # of the live registry (/readyz, /metrics), not listed as live for good.
            if not stopped:
                self._release_instance_id()  # (cancelled before its step)
                self._cut_at = time.monotonic()  # no grace: every call in flight is cut
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await _stop_server(server, None)
                if self._drain_forced:
                    await self._deregister_after_forced_stop()
            await self._close_after_stop()

    def _calls_cut(self) -> bool:
        """Whether a call cancelled now was cut by the drain's stop: a forced stop (a
        second signal, :meth:`_end_drain_now`, or the drain's task cancelled) has begun,
        or the ``grace_s`` of a graceful one has run out. grpc core then ends the calls
        still in flight and their callers get ``UNAVAILABLE``, while the handler tasks
        see a cancellation as for a client's cancel; the telemetry interceptor asks this
        (``TelemetryServerInterceptor.calls_cut``) for a call it would record
        ``CANCELLED``, and records ``UNAVAILABLE``, the code sent. A client's own cancel
        after that moment cannot be told apart and is recorded ``UNAVAILABLE`` too."""
        cut_at = self._cut_at
        return cut_at is not None and time.monotonic() >= cut_at

    async def _deregister_after_forced_stop(self) -> None:
        """A drain ended by a second signal (:meth:`_end_drain_now`) before its
        deregistration was done (cut under way: a registry slow to answer; or not begun):
        once the server has stopped, one more try, for :data:`_FORCED_DEREGISTER_S` at
        most, so the entry is not left listed, a stopped address mesh clients still pick,
        until the registry's TTL expires it. Past the bound, failed or cancelled, it is
        logged (``deregister failed``) and the TTL expires the entry. Never raises."""
        instance = self.instance
        if instance is None or self._withdrawn:
            return
        try:
            await _bounded(self.registry.deregister(instance), _FORCED_DEREGISTER_S)
            self._withdrawn = True  # (stats().registered)
        except (Exception, asyncio.CancelledError) as exc:
            with contextlib.suppress(Exception):  # logs must not break the stop
                _log.warning("deregister failed", service=self.service,
                             error=str(exc) or repr(exc))

    def _close_gate(self) -> None:
        """Once the grpc server has stopped: the request gate's first-message timer is
        cancelled (:meth:`RequestGate.close <meshkit._limits.RequestGate.close>`), not left
        on the loop for up to ``first_message_timeout_s``."""
        if self.gate is not None:
            self.gate.close()

    async def _close_after_stop(self) -> None:
        """The drain's last steps: close the request gate (:meth:`_close_gate`), the
        interceptors and what the server took (:meth:`_after_stop_steps`, as an undone
        :meth:`start` does), log "stopped", write the access log's last
        batch, mark the server stopped and record its final counters (:func:`ended`).
        Each step is attempted whatever the one before did: one that fails (or a warning
        turned into an error, ``-W error``) is logged, one under way when the drain's task
        is cancelled is cancelled, and the server still ends stopped (the drain's waiters
        released) with its final counters recorded."""
        self._close_gate()
        if self._health_follower is not None:  # (the drain cancelled before its step)
            self._health_follower.cancel()
        try:  # the drain's task cancelled meanwhile: the other steps still run
            await _each_step(self._after_stop_steps(), through_cancel=True)
        finally:
            for what, last in (
                    ("logging the stop", lambda: _log.info(
                        "stopped", service=self.service, refused=self.drain_refused)),
                    ("writing the access log's last batch", lambda: flush_logs(0))):
                try:
                    last()
                except Exception as exc:
                    with contextlib.suppress(Exception):  # logs must not break the stop
                        _log.warning(f"{what} failed", error=repr(exc))
            self._stopped.set()
            ended(self)  # its final counters, for /metrics after it is gone

    async def _refuse_new_calls(self) -> None:
        """The drain's refusal phase, right before ``server.stop()``: every new call of a
        meshkit client (its ``user-agent`` holds the ``meshkit/`` token every
        ``MeshChannel`` sub-channel sends, :data:`~meshkit._metadata.MESH_USER_AGENT`)
        of a method whose response is unary, but the health service's, is answered
        ``UNAVAILABLE`` :data:`DRAINING_DETAILS` with the nack trailer
        (``meshkit-nack: 1``) before any code of it runs (no
        telemetry, no check: counted in :attr:`drain_refused`), until no call has been
        refused for :data:`_REFUSE_QUIET_S` or for :data:`_REFUSE_MAX_S` at most. A
        window in which this server's event loop was held up (its sleep overran by more
        than the window: a loaded box) is not quiet, whatever it counted: the loop took
        no call meanwhile, and the calls that arrived wait in grpc core.

        grpc core ends the calls a server has accepted but not yet handed to Python when
        it stops with ``CANCELLED`` (grpc/grpc#41785), a status no client retries; a
        mesh client that has not seen the deregistration (its registry unreachable) got
        those. A refusal is retried on another endpoint by mesh clients (a nack:
        whatever the method's idempotency), whose balancers charge this endpoint a
        failure (P2C's penalty, outlier ejection's count) and so stop picking it: calls
        stop arriving and the stop finds none waiting.

        A mesh client's streaming-response calls are served like other clients' (below):
        meshkit's client retries a nacked server stream only when it is safe to repeat
        (its policy's ``idempotent`` or an idempotency key, which the server cannot see
        in full) and a bidi stream never, so a refusal would fail them. Unknown methods
        are answered ``UNIMPLEMENTED`` at once (nothing waits in grpc for them). Whether a
        method is refused is worked out once per method (its handler looked up in the
        table, else in the generic handlers after it) and cached.

        Other clients' calls are served as usual (in-flight calls of ``grace_s``): such a
        client does not read the nack and never learns of the deregistration, so it
        would go on sending through the whole phase and see every refusal as a failed
        call (a grpc-js or grpc.aio ``round_robin`` client over two servers, no retry
        policy: hundreds per drain), where the GOAWAY of ``server.stop()`` moves it to
        another address without failing any (PROTOCOL-HTTP2.md: "Servers should send
        GOAWAY before terminating a connection"); its calls that reach grpc in the
        moment of the stop are ended ``CANCELLED`` (grpc core's behaviour, as with any
        grpc.aio server). The table's lookup is swapped once
        (:meth:`_MethodTable.refuse`; it reads a call's user agent only from then on):
        calls before the drain pay nothing. A server without a method table (a grpc
        observability plugin active at start, which keeps the methods registered with
        grpc) has no refusal phase."""
        table = self._table
        if table is None:
            return
        table.refuse(_refusal(self))
        loop = asyncio.get_running_loop()
        end = loop.time() + _REFUSE_MAX_S
        while (left := end - loop.time()) > 0:
            before = self.drain_refused
            window = min(_REFUSE_QUIET_S, left)
            began = loop.time()
            await asyncio.sleep(window)
            # quiet only if this loop ran meanwhile: held up (a loaded box: its sleep
            # overran by more than the window), it took no call, and calls may be
            # waiting in grpc core, which the stop would end CANCELLED
            if self.drain_refused == before and loop.time() - began < 2 * window:
                break

    @property
    def ready(self) -> bool:
        """Registered and serving, not draining, and :attr:`serving` (what ``/readyz``
        reports; it follows the health status at once, while the registration follows
        it within ``ServeOptions.readmit_after_s``)."""
        return (self.instance is not None and self._server is not None
                and not self.draining and self.serving)

    @property
    def serving(self) -> bool:
        """The gRPC health status of ``""`` (the whole server) and of the mesh service
        name on :attr:`health` is SERVING: the application marks its server not serving
        there (a dependency down, a cache warming), and every gRPC health client,
        Consul's GRPC check and gRFC A17 client stops sending it calls, so ``/readyz``
        (a Kubernetes readiness probe) says so too. A name with no status set counts as
        serving (meshkit sets both at start)."""
        statuses = getattr(self.health, "_server_status", None)
        if not isinstance(statuses, Mapping):
            return True
        ok = health_pb2.HealthCheckResponse.SERVING
        return all(statuses.get(name, ok) == ok for name in ("", self.service))

    @property
    def live(self) -> bool:
        """Started and not stopped; what the introspection registry lists."""
        return self._server is not None and not self._stopped.is_set()

    def stats(self) -> ServerStats:
        """A typed snapshot for ``/metrics``, ``/readyz`` and ``/debug/mesh``."""
        inst = self.instance
        opts = self.options
        gate = self.gate
        registry: dict[str, Any] | None = None
        status = getattr(self.registry, "status", None)
        if status is not None:
            st_reg = status()
            registry = {**dataclasses.asdict(st_reg), "ok": st_reg.ok}
        return ServerStats(
            service=self.service,
            instance_id=inst.instance_id if inst else None,
            address=inst.address if inst else None,
            services=tuple(self.service_names),
            ready=self.ready,
            serving=self.serving,
            # out while withdrawn for its health status and once the drain deregistered
            registered=inst is not None and not self._withdrawn,
            # draining now: drain() called and the server not stopped yet (the
            # attribute stays set for good, refusing a later start())
            draining=self.draining and not self._stopped.is_set(),
            tls=opts.tls is not None or opts.credentials is not None,
            chain=tuple(type(i).__name__ for i in self._chain),
            telemetry=opts.telemetry is not None,
            admin=self.admin.url if self.admin is not None else None,
            deadline_rejections=self._deadline.rejected if self._deadline is not None else 0,
            gate_shed=(gate.shed if gate is not None else
                       self.call_slots.shed if self.call_slots is not None else 0),
            gate_timed_out=gate.timed_out if gate is not None else 0,
            gate_evicted=gate.evicted if gate is not None else 0,
            gate_cardinality=gate.cardinality if gate is not None else 0,
            tls_handshakes=self._tls_handshakes,
            rate_limit_storage_errors=(self._rate_limiter.storage_errors
                                       if self._rate_limiter is not None else 0),
            rate_limit_keys_evicted=(self._rate_limiter.keys_evicted
                                     if self._rate_limiter is not None else 0),
            registry=registry,
        )

    async def wait_stopped(self) -> None:
        """Return once :meth:`drain` has finished."""
        await self._stopped.wait()

    async def run_until_signal(
        self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Start if needed, serve until one of ``signals`` arrives (``signal.Signals``, or
        their numbers), then :meth:`drain`.

        The signal handlers are installed first: a signal while the server starts stops
        the start (undone: nothing stays registered), then this returns. They stay
        installed until the drain has ended: the same signal a second time during the
        drain (Ctrl-C twice, as uvicorn's second Ctrl-C) ends it now: in-flight calls
        are cancelled (``UNAVAILABLE``), the server is stopped and closed, and this
        returns; logged. Another signal (Ctrl-C reaching the process group, then a
        process manager's SIGTERM) is logged and the drain goes on (in-flight calls keep
        their ``grace_s``); that one again ends it. Once it is ending so, any signal is
        only logged, and a deregistration the end cut short is tried once more after the
        stop (2 s at most) rather than left listed until the registry's TTL.
        A child forked meanwhile (``multiprocessing``, a pre-fork worker)
        gets the signals' previous handlers back: a signal to it is its own.

        Every server of the event loop sees the signal (several ``serve()`` in one
        process, e.g. under ``asyncio.gather``): the loop keeps one handler per signal,
        so the first server installs one that wakes them all, and the last to end its
        drain removes it and gives the signal back the handler it had before: a Python
        handler, or your own ``loop.add_signal_handler`` callback on asyncio's loop (on
        uvloop, whose loop handlers cannot be read, that one is not given back: the
        loop's default stays).

        Outside the main thread (a thread running its own event loop) no handlers are
        installed, as signals reach the main thread only (uvicorn does the same): this
        serves until :meth:`drain` or cancellation ends it.

        Cancelled (e.g. the task of a ``TaskGroup`` whose sibling failed), it drains too
        before ``CancelledError`` propagates, so the server does not stay registered and
        serving with no one left to stop it; the drain is shielded: cancelled again, it
        runs to its end in the background.

        Raises:
            ConfigError: ``signals`` is one string or not a collection, or holds what is
                no signal or one no process can catch (``SIGKILL``, ``SIGSTOP``); quoted,
                before anything starts.
        """
        await self._serve_until_signal(signals, None)

    async def _serve_until_signal(self, signals: Sequence[signal.Signals],
                                  on_started: Callable[[MeshServer], Any] | None) -> None:
        """:meth:`run_until_signal`, with ``on_started`` run once the server is started;
        a signal while starting or while ``on_started`` runs cancels them, then drains.

        Raises:
            Exception: what :meth:`start` or ``on_started`` raised, after the drain.
        """
        loop = asyncio.get_running_loop()
        got = asyncio.Event()
        # a plain number (15) as the Signals it is: the listeners log the signal's name
        signals = _checked_signals(signals)

        seen: set[signal.Signals] = set()  # the signals that came (drain begun or not)

        def on_signal(sig: signal.Signals) -> None:
            if got.is_set() or self.draining:
                # the same signal again (Ctrl-C twice): stop now; any signal once the
                # drain is ending so: "already ending it"
                if sig in seen or self._drain_forced:
                    self._end_drain_now(sig)
                else:  # another one (Ctrl-C to the group, then the manager's SIGTERM)
                    _log.warning("signal during the drain: the drain goes on (this "
                                 "signal again ends it now)", service=self.service,
                                 signal=sig.name, grace_s=self.options.grace_s)
            seen.add(sig)
            got.set()

        listening: list[signal.Signals] = []
        in_main_thread = threading.current_thread() is threading.main_thread()
        if not in_main_thread and signals:
            _log.info("not in the main thread: no signal handlers, serving until drained "
                      "or cancelled", service=self.service)
        try:
            try:
                if in_main_thread:
                    for sig in signals:
                        # one handler per loop and signal, shared with the loop's other
                        # servers (the loop keeps one: a second would replace the first's)
                        _listen_for_signal(loop, sig, on_signal)
                        listening.append(sig)
                await self._start_up_unless(got, on_started)
                waiter = asyncio.ensure_future(got.wait())
                stopped = asyncio.ensure_future(self._stopped.wait())
                try:
                    await asyncio.wait({waiter, stopped},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for fut in (waiter, stopped):
                        fut.cancel()
            finally:
                # with the handlers still installed: a second signal ends the drain now
                # (_end_drain_now), not the process; itself shielded: cancelled, it runs
                # to its end (handlers removed)
                await self.drain()
        finally:
            for sig in listening:  # the last server of the loop removes the handler
                _stop_listening(loop, sig, on_signal)

    async def _start_up_unless(self, got: asyncio.Event,
                               on_started: Callable[[MeshServer], Any] | None) -> None:
        """:meth:`start` (if not started) and ``on_started``, in a task cancelled when
        ``got`` is set first (a signal) or when this is cancelled.

        Raises:
            Exception: what :meth:`start` or ``on_started`` raised.
        """
        async def start_up() -> None:
            if self._server is None:
                await self.start()
            if on_started is not None:
                result = on_started(self)
                if inspect.isawaitable(result):  # a coroutine, or asyncio.gather(...)'s
                    await result

        task = asyncio.ensure_future(start_up())
        waiter = asyncio.ensure_future(got.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()  # a start() cancelled undoes itself
                await asyncio.wait({task})
        if not task.cancelled():
            task.result()


_REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
_REFLECTION_NAMES = frozenset((_REFLECTION_V1, reflection.SERVICE_NAME))
_REFLECTION_METHOD = "ServerReflectionInfo"


class _MethodSymbols:
    """A protobuf descriptor pool as meshkit's reflection servicer reads it: the pool's
    own lookups, and :meth:`FindFileContainingSymbol` finding methods too.

    reflection.proto's ``file_containing_symbol`` takes "a fully-qualified symbol name
    (e.g. ``<package>.<service>[.<method>]`` or ``<package>.<type>``)"; protobuf's
    Python pool (upb) finds services, messages, enums and fields by name, but no
    methods, so grpcio-reflection answered a method's name (``grpcurl describe
    pkg.Svc.Method``) ``NOT_FOUND``. Asked only by reflection requests."""

    __slots__ = ("_pool",)

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        """The file declaring ``symbol``: the pool's answer, else, for a method's full
        name (``pkg.Service.Method``), its service's file.

        Raises:
            KeyError: no such symbol (answered ``NOT_FOUND``), as the pool raises it.
        """
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service) if service and method else None
            except KeyError:
                found = None
            if found is None or method not in found.methods_by_name:
                raise
            return found.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

_UNDO_DEREGISTER_S = 5.0
"""How long an undone :meth:`MeshServer.start` waits to withdraw its registration."""

_DRAIN_DEREGISTER_S = 10.0
"""How long a drain waits for the registry's ``deregister()`` (as go-kratos's
``registrarTimeout``, 10 s; meshkit's own registries bound each request below it); past it
the deregistration is cancelled and logged (``deregister failed``), and the drain goes on:
the registry's TTL expires the entry."""

_FORCED_DEREGISTER_S = 2.0
"""How long a drain ended by a second signal waits, once the server has stopped, for the
``deregister()`` it had not finished (:meth:`MeshServer._deregister_after_forced_stop`);
past it the registry's TTL expires the entry."""

_CLOSE_INTERCEPTOR_S = 5.0
"""How long a stopped server waits for each interceptor's ``aclose()``; past it the close
is cancelled and logged (``closing an interceptor failed``) and the drain goes on."""

_HEALTH_RECHECK_S = 1.0
"""How often the health follower checks the status besides its ``Watch``
(``ServeOptions.follow_health``)."""
_HEALTH_RETRY_S = 1.0
"""How long the health follower waits before it tries a failed registry write again..."""
_HEALTH_RETRY_MAX_S = 16.0
"""... doubled after each failure in a row, up to this."""

_REFUSE_QUIET_S = 0.05
"""The drain's refusal phase ends once no call was refused for this many seconds..."""
_REFUSE_MAX_S = 0.5
"""... or after this many seconds at most (mesh callers that keep sending: their
registries unreachable, their other endpoints failing); see
:meth:`MeshServer._refuse_new_calls`."""


def _refusal(server: MeshServer) -> Handler:
    """The handler of every mesh client's call (but health's) in ``server``'s drain
    refusal phase: counts the call in ``server.drain_refused`` and answers
    ``UNAVAILABLE`` :data:`DRAINING_DETAILS` with the nack trailer :data:`NACK_METADATA`.
    A stream-stream handler, which starts without reading a request, so it answers calls
    of every kind."""

    async def refuse(requests: Any, context: Any) -> None:
        server.drain_refused += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS,
                            trailing_metadata=(NACK_METADATA,))

    handler: Handler = grpc.stream_stream_rpc_method_handler(refuse)
    return handler


_T = TypeVar("_T")


async def _in_a_context_of_its_own(aw: Coroutine[Any, Any, _T], name: str, *,
                                   handlers: Executor | None = None) -> _T:
    """Await ``aw`` in a task that runs in a copy of the current context without meshkit's own
    context variables (every one named ``meshkit_...``; cancelling the caller cancels it),
    with ``handlers`` (a grpc server's: where its calls run their plain-function handlers,
    :data:`~meshkit._handlers.HANDLER_EXECUTOR`) set when given. For starting a server:
    grpc.aio runs every call, and asyncio every connection of an aiohttp server, in a copy
    of the context the server started in, so a server started from a handler (or inside
    ``deadline_scope``) would hand that handler's caller identity (``current_claims()``,
    ``current_peer()``, the bearer token ``TokenForwarder`` sends) and its propagated
    deadline to every call it serves, for its whole life. The application's own variables
    (``structlog.contextvars`` bound at start-up, say) still reach the calls, as on a plain
    grpc.aio server; OpenTelemetry's context does not (the starter's current span would
    parent every call without a ``traceparent`` and its W3C baggage reach them all).
    Nothing more per call."""
    context = context_without_meshkit()
    if handlers is not None:
        context.run(HANDLER_EXECUTOR.set, handlers)
    return await asyncio.get_running_loop().create_task(aw, name=name, context=context)


async def _refuse_a_port_in_use(host: str, port: int) -> None:
    """Before a server binds the host *name* ``host`` on a fixed ``port``: raise when
    another socket listens on ``port`` at one of the addresses ``host`` resolves to.
    grpc binds a name on each of its addresses and starts when one of them binds
    (``localhost``: ``127.0.0.1`` taken by another process, ``::1`` free), so the server
    was registered at ``host:port`` while callers that resolve the name to the address
    taken reached the other process. An address this machine does not have is skipped,
    as grpc skips it.

    Raises:
        RuntimeError: an address of ``host`` has ``port`` in use (as grpc's "Failed to
            bind"), or another error binding it.
    """
    try:
        addresses = await _addresses(bare_host(host), port)
    except OSError:
        return  # grpc's own resolution fails the bind, with its message
    for family, address in addresses:
        try:
            socket.create_server((address, port), family=family).close()
        except OSError as exc:
            if exc.errno in _NOT_HERE:
                continue
            raise RuntimeError(f"cannot bind {host!r} port {port}: {address} port {port} "
                               f"is in use or refused ({exc.strerror or exc})") from None


async def _each_step(steps: list[tuple[str, Callable[[], Any]]], when: str = "", *,
                     through_cancel: bool = False) -> None:
    """Await each of ``steps`` (``(what, step)``) whatever the ones before did; one that
    fails is logged (``"<what><when> failed"``), not raised. With ``through_cancel``, a
    cancellation of the caller ends only the step under way: the others still run, then
    the ``CancelledError`` is raised.

    Raises:
        asyncio.CancelledError: the caller was cancelled (after the other steps, with
            ``through_cancel``).
    """
    cancelled: asyncio.CancelledError | None = None
    for what, step in steps:
        try:
            await step()
        except Exception as exc:
            _log.warning(f"{what}{when} failed", error=repr(exc))
        except asyncio.CancelledError as exc:
            if not through_cancel:
                raise
            cancelled = exc
    if cancelled is not None:
        raise cancelled


async def _stop_server(server: grpc.aio.Server, grace_s: float | None) -> None:
    """``server.stop(grace_s)``, also when grpc.aio's own serving task was cancelled by
    someone else: a task that cancelled every other one (the "cancel every other task,
    then drain()" shutdown recipe) or ``asyncio.run()``'s sweep. grpc.aio's ``stop()``
    then begins the shutdown (GOAWAY, listeners closed) and raises that task's
    ``CancelledError``, leaving the server half stopped (never destroyed; collected so,
    it hung the process); a drain raised it to a caller nobody had cancelled. Here a
    ``CancelledError`` that is not the calling task's (its ``cancelling()`` unchanged)
    is followed by a second ``stop()`` (grpc.aio's ``stop()`` may be repeated), which
    waits ``grace_s`` for the calls in flight and ends the shutdown. The request states
    grpc core still pointed to are kept alive by then (:func:`_request_states`).

    Raises:
        asyncio.CancelledError: the calling task was cancelled meanwhile.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        await asyncio.ensure_future(server.stop(grace_s))
    except asyncio.CancelledError:
        if task is None or task.cancelling() > before:
            raise
        # the shutdown begun: its grace, then the server destroyed
        await asyncio.ensure_future(server.stop(grace_s))


# grpc.aio's tasks that each wait for grpc core to hand them the next call (cygrpc's
# AioServer; names checked by tests/test_hunt40_server_cancel_all_recipe.py)
_REQUEST_CALL_TASKS = ("AioServer._request_call", "AioServer._request_registered_call")


def _request_states(server: grpc.aio.Server,
                    loop: asyncio.AbstractEventLoop) -> list[object]:
    """The ``RPCState`` objects grpc.aio's pending request tasks of ``server`` (on
    ``loop``, running or not: ``asyncio.run()``'s sweep runs outside it) handed to
    grpc core (one per registered method, one for the others), to be kept alive until
    the server has shut down.

    Each such task passes grpc core pointers into its ``RPCState`` (where to write the
    next call and its metadata) and holds the only reference to it. A task that cancels
    every other one (a shutdown recipe) or ``asyncio.run()``'s sweep cancels these too:
    the states are freed while core still points at them, and the server's shutdown then
    has core fail those requests, writing into the freed memory (valgrind memcheck: two
    "Invalid write of size 8" in cygrpc per pending request; now and then a
    segmentation fault). Found from the tasks' coroutines (their Cython closures hold the
    state and the server's ``AioServer``); an empty list when grpc.aio keeps them
    otherwise."""
    import gc  # (only when every task is being cancelled)

    core = getattr(server, "_server", None)
    states: list[object] = []
    for task in asyncio.all_tasks(loop):
        coro = task.get_coro()
        if getattr(coro, "__qualname__", None) not in _REQUEST_CALL_TASKS:
            continue
        for scope in gc.get_referents(coro):
            held = gc.get_referents(scope)
            if any(obj is core for obj in held):
                states += [obj for obj in held if type(obj).__name__ == "RPCState"]
    return states


class _LoopEndWatch(asyncio.Task[None]):
    """The task of :meth:`MeshServer._stop_at_loop_end`, which tells whether it was
    cancelled by its event loop's end.

    ``asyncio.run()`` (``asyncio.Runner``, :func:`meshkit.run`, uvloop's ``run``)
    cancels the tasks left once ``main`` has ended from outside the loop, no loop
    running in the thread (``loop_ending``); a task that cancels every other one (the
    "cancel every other task, then drain()" shutdown recipe, in ``main`` or in a task a
    signal handler started) does it from inside the loop, which goes on. Cancelled so,
    the watch calls ``replace`` (at once, in the canceller's step: a ``main`` that
    returns right after still has a watch when the loop ends) and ends, so the
    canceller's ``gather`` of the tasks it cancelled returns; ``replace`` is called once
    per watch, and a replacement has none (``None``): a shutdown that cancels every
    other task until none is left found a new watch every round and never ended, while
    one recipe, then the loop's end without a drain, still has a watch (after a second
    recipe none: drain then). Either way ``on_cancel`` is called first, in the
    canceller's step, while the tasks cancelled with the watch (grpc.aio's own among
    them) have not yet run (:meth:`MeshServer._pin_request_states`); one that raises is
    logged."""

    def __init__(self, coro: Coroutine[Any, Any, None], *,
                 loop: asyncio.AbstractEventLoop, name: str,
                 on_cancel: Callable[[], None], replace: Callable[[], None] | None) -> None:
        super().__init__(coro, loop=loop, name=name)
        self.loop_ending = False
        self._on_cancel: Callable[[], None] | None = on_cancel
        self._replace: Callable[[], None] | None = replace

    def cancel(self, msg: Any | None = None) -> bool:
        if self.done():
            return False
        if asyncio._get_running_loop() is None:  # cancelled by the loop's end
            self.loop_ending = True
        on_cancel, self._on_cancel = self._on_cancel, None
        if on_cancel is not None:
            try:
                on_cancel()
            except Exception as exc:  # the cancel itself must happen
                _log.warning("keeping grpc's request states failed", error=repr(exc))
        cancelled = super().cancel(msg)
        replace, self._replace = self._replace, None
        if cancelled and not self.loop_ending and replace is not None:
            replace()
        return cancelled


async def _bounded_close(aclose: Callable[[], Any]) -> None:
    """``await aclose()`` for at most :data:`_CLOSE_INTERCEPTOR_S`; past that, cancel it
    and raise ``TimeoutError``."""
    await _bounded(aclose(), _CLOSE_INTERCEPTOR_S)


async def _bounded(aw: Awaitable[Any], timeout_s: float) -> None:
    """Await ``aw`` for at most ``timeout_s``; past that, or cancelled meanwhile, cancel
    it and raise ``TimeoutError`` (``CancelledError``)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:  # not left running (a deregistration that hangs)
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise TimeoutError(f"not done within {timeout_s} s")
    task.result()


_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def _checked_signals(signals: object) -> tuple[signal.Signals, ...]:
    """``signals`` as ``signal.Signals`` (a plain number, ``15``, as the one it is).

    Raises:
        ConfigError: one string (``"SIGTERM"``, which would be read as its characters)
            or no collection, a member that is no signal, or one no process can catch
            (``SIGKILL``, ``SIGSTOP``); quoted.
    """
    if isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        raise ConfigError(f"signals must be a collection of signals, e.g. "
                          f"(signal.SIGTERM,), got {signals!r}")
    checked = []
    for sig in signals:
        try:
            if isinstance(sig, bool):
                raise ValueError(sig)
            one = signal.Signals(sig)
        except (ValueError, TypeError):
            raise ConfigError(f"signals must hold signals (signal.SIGTERM, 15), got "
                              f"{sig!r}") from None
        if one in _UNCATCHABLE:
            raise ConfigError(f"signals: {one.name} cannot be caught, got {sig!r}")
        checked.append(one)
    return tuple(checked)


async def serve(
    service: str,
    servicers: Sequence[tuple[AddServicer, Any]],
    *,
    registry: Registry | str | None = None,
    options: ServeOptions | None = None,
    on_started: Callable[[MeshServer], Any] | None = None,
) -> None:
    """Serve ``servicers`` as ``service`` until SIGTERM/SIGINT, then drain and return.

    Args:
        service: mesh service name, e.g. ``"userd"``.
        servicers: ``[(add_XServicer_to_server, servicer), ...]``; may include your own
            ``grpc_health.v1.health.aio.HealthServicer``, served instead of meshkit's
            and driven the same way (:class:`MeshServer`).
        registry: a :class:`~meshkit.discovery.Registry` or a registry URI
            (:class:`MeshServer`); default :func:`meshkit.discovery.registry_from_env`.
        options: :class:`ServeOptions`.
        on_started: called with the :class:`MeshServer` once it is registered (may be
            async, or return an awaitable, e.g. ``asyncio.gather(...)``'s: awaited).

    The SIGTERM/SIGINT handlers are installed before the server starts: a signal while
    it starts or while ``on_started`` runs cancels them, then the server drains and
    ``serve()`` returns. They stay installed until the drain has ended: the same signal
    a second time during the drain (Ctrl-C twice) ends it now, cutting the in-flight
    calls' ``grace_s`` short (they end ``UNAVAILABLE``; logged), as uvicorn's second
    Ctrl-C; another signal (Ctrl-C, then a process manager's SIGTERM) is logged and
    does not.
    Children forked while serving (``multiprocessing``, ``ProcessPoolExecutor``, pre-fork
    workers) get the signals' previous handlers back, so a signal sent to one is handled
    by that child (SIGTERM ends it), never relayed to this server. Every ``serve()`` of
    the process gets the signal (``asyncio.gather(serve("a", ...), serve("b", ...))``:
    both drain, then ``gather`` returns); once the last has returned, the signals have
    their handlers from before back (:meth:`MeshServer.run_until_signal`). Outside the main
    thread (``asyncio.run(serve(...))`` in a ``threading.Thread``) no signal handlers are
    installed, since signals reach the main thread only (as uvicorn): ``serve()`` serves
    until it is cancelled or :meth:`MeshServer.drain` is called (from another thread:
    ``asyncio.run_coroutine_threadsafe(server.drain(), loop)`` with the server
    ``on_started`` got). If ``on_started`` raises, or ``serve()`` is cancelled, the server
    drains (deregisters, stops; shielded from a second cancellation) before the error
    propagates: no instance stays registered and serving once ``serve()`` has returned
    or raised.

    Raises:
        ConfigError, CertificateError, RegistryError, RuntimeError: as
            :class:`MeshServer` documents; ``ConfigError`` too for an ``on_started`` that
            is not callable (quoted, before anything starts).
        Exception: what ``on_started`` raised, after the drain.
    """
    if on_started is not None and not callable(on_started):
        # else called only once bound, registered and serving: a TypeError, then a drain
        raise ConfigError(f"serve({service!r}): on_started must be a function taking the "
                          f"MeshServer, or None, got {on_started!r}")
    server = MeshServer(service, servicers, registry=registry, options=options)
    await server._serve_until_signal((signal.SIGTERM, signal.SIGINT), on_started)
