"""Name lookups of the registries' aiohttp connectors on threads of their own.

aiohttp's default resolver (``ThreadedResolver``) calls ``loop.getaddrinfo``, which runs
in the event loop's default executor: an application that fills that executor with its
own blocking work (``asyncio.to_thread``, ``run_in_executor(None, ...)``; 6 threads on a
2-core box) held every lookup of a registry's agent or member names behind it, so the
keep-alives (etcd's lease, Consul's TTL passes) timed out and a merely busy instance left
discovery. :class:`OwnThreadsResolver` looks names up on a pool the registry owns
(:class:`LookupThreads`), shut down when the registry closes, and made afresh in a child
process forked from the registry's (``os.register_at_fork``).

A forked child's copies of its parent's connections, the other fork concern of the
registries' aiohttp sessions, are dropped by :func:`drop_inherited_sockets`; the sessions
of every event loop a registry was used from are closed by :func:`close_per_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import aiohttp
import aiohttp.abc

from meshkit._fork import name_dev_null, reset_in_forked_child

__all__ = ["DNS_THREADS", "LookupThreads", "OwnThreadsResolver", "abandon_session",
           "cancelled_by_close", "close_per_loop", "close_per_loop_nowait",
           "drop_inherited_sockets", "session_sockets"]

#: getaddrinfo's flags as aiohttp's ThreadedResolver passes them (AI_ADDRCONFIG, masked
#: where the platform has AI_MASK)
_AI_ADDRCONFIG = socket.AI_ADDRCONFIG & getattr(socket, "AI_MASK", ~0)
#: Windows refuses ``localhost`` with AI_ADDRCONFIG when no network is active: retried
#: without the flag there, as aiohttp's resolvers do (aio-libs/aiohttp#5357). A module
#: flag (aiohttp's own helper, ``aiohttp.resolver._is_windows_localhost``, is private).
_IS_WINDOWS = sys.platform == "win32"
#: threads of a registry's name lookups: one stuck lookup (a DNS server that does not
#: answer) leaves one for the other names
DNS_THREADS = 2


class LookupThreads:
    """A registry's lookup pool: :attr:`pool`, :data:`DNS_THREADS` threads named
    ``meshkit-<registry>-dns`` (e.g. ``registry="etcd"``), started at the first lookup
    (none for agents or members given by IP address, which aiohttp never resolves). Its
    owner calls :meth:`shutdown` when it closes.

    **Forks.** A child made by ``os.fork()`` gets a new pool
    (``os.register_at_fork(after_in_child=...)``, as ``meshkit.discovery._local`` gives a
    child a connection of its own): the inherited one has no thread there, while its idle
    semaphore may say one is idle, so it would start none and every lookup would wait for
    good. The inherited pool is left alone (not shut down: a lock of it may have been
    held by a parent's thread at the fork). A pool shut down before the fork is shut down
    in the child too.

    Args:
        registry: the registry's kind, in the threads' names: ``"consul"``, ``"etcd"``.
    """

    __slots__ = ("__weakref__", "_closed", "_prefix", "pool")

    def __init__(self, registry: str) -> None:
        self._prefix = f"meshkit-{registry}-dns"
        self._closed = False
        self.pool = self._new_pool()
        _all_lookup_threads.add(self)

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=DNS_THREADS, thread_name_prefix=self._prefix)

    def shutdown(self) -> None:
        """End the threads once their lookup in flight, if any, returns (a stuck DNS
        server's is not waited for); lookups not started are dropped, later ones refused
        (``RuntimeError`` from the pool). Idempotent."""
        self._closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _forget_parent(self) -> None:
        """In a forked child: a new pool (shut down at once if this one was)."""
        self.pool = self._new_pool()
        if self._closed:
            self.pool.shutdown(wait=False)


#: Every lookup pool of the process: each is made afresh in a forked child
#: (:meth:`LookupThreads._forget_parent`).
_all_lookup_threads = reset_in_forked_child(LookupThreads)


def drop_inherited_sockets(sessions: Iterable[aiohttp.ClientSession]) -> None:
    """In a child made by ``os.fork()`` (a registry's ``after_in_child`` hook): make the
    child's copies of the socket descriptors of ``sessions`` (the parent's aiohttp
    sessions; their connections pooled idle and those acquired by a request or a
    watch's stream) name ``/dev/null`` instead (``os.dup2``, non-inheritable), so the
    child no longer holds the parent's connections open. A descriptor that is no socket
    (any more) is left alone; ``OSError`` is not raised.

    Why: a socket's connection ends (FIN) when its last descriptor is closed, and each
    forked child holds a copy of every descriptor of its parent's, so a parent's
    ``close()`` of a connection sent nothing while a worker forked from it lived: the
    connection stayed open, its server side fed (a watch's stream), for as long as the
    worker lived, and so did every connection the parent recycled later.

    Why not close them in the child: through asyncio (the sessions' own close, or their
    collection: the connector closes its transports) the transport removes its
    descriptor from the event loop's epoll instance, which the child's copy of the
    parent's loop shares with the parent (an epoll descriptor made before a fork names
    the same instance in both), and an instance's registration is its (open file,
    descriptor number) pair, the same in both processes: the parent's registration went
    with it, and the parent's watch stream and pooled connections were never read again
    (a request timed out, a stream went silent until resumed); with TLS the transport
    would also write a ``close_notify`` onto the parent's stream. With ``os.close`` the
    number would be free, and the child's copy of the transport (still holding it) could
    later close a descriptor the child opened since with that number.

    Why ``dup2`` is safe for the parent: it drops only the child's reference to the
    socket's open file (the parent's remains, so the socket and its epoll registration
    stay as they were: a registration goes only when every descriptor of its open file
    is closed) and keeps the number taken in the child by ``/dev/null``. A transport the
    child closes or collects later (an interpreter's exit) then asks the shared epoll
    instance to remove ``/dev/null``, which it refuses (EPERM; asyncio's and uvloop's
    selectors ignore that), and any byte it writes (TLS ``close_notify``) fails
    (ENOTSOCK) instead of reaching the parent's stream.

    A connection the parent was opening at the fork (in no pool yet) is not found: that
    one stays open until the child exits, as before.

    Args:
        sessions: the parent's sessions, as the child's copy of the registry holds them
            (closed ones, with no connector, are skipped).
    """
    name_dev_null(sock for session in sessions for sock in session_sockets(session))


def session_sockets(session: aiohttp.ClientSession) -> list[socket.socket]:
    """The sockets of ``session``'s connections: those pooled idle and those a request or
    a watch's stream holds (aiohttp's connector pool, read through its private ``_conns``
    and ``_acquired``: none found where a version keeps them elsewhere); none for a
    closed session (no connector). A connection still being opened is in neither."""
    connector = session.connector
    if connector is None:
        return []
    # aiohttp's pool: {key: deque[(protocol, last used)]}, and the protocols in use
    protocols = [proto for conns in list(getattr(connector, "_conns", {}).values())
                 for proto, _ in conns]
    protocols.extend(getattr(connector, "_acquired", ()))
    socks = []
    for proto in protocols:
        transport = getattr(proto, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            socks.append(sock)
    return socks


def _shut_down(sock: socket.socket) -> None:
    """``shutdown(SHUT_RDWR)`` the connection of ``sock``, a transport's ``socket``
    extra: asyncio's ``TransportSocket`` or uvloop's ``PseudoSocket``, which refuses
    ``shutdown()`` (``TypeError``: "transport sockets do not support shutdown()"), so it
    is done on a socket object over the same descriptor, detached after (the descriptor
    stays the transport's); nothing for one closed already (``-1``: uvloop's
    ``loop.close()`` closes its transports' descriptors itself). Raises ``OSError`` (a
    connection already down)."""
    fd = sock.fileno()
    if fd < 0:
        return
    raw = socket.socket(fileno=fd)
    try:
        raw.shutdown(socket.SHUT_RDWR)
    finally:
        raw.detach()


#: The tasks closing sessions of loops closed with their owner pending
#: (:func:`abandon_session`): referenced until they end.
_abandoned: set[asyncio.Task[None]] = set()


def abandon_session(session: aiohttp.ClientSession, name: str,
                    errors: tuple[type[BaseException], ...]) -> None:
    """Let go of ``session``, of an event loop closed with its owner task pending (a loop
    stopped and closed without its tasks run to their end): that task never runs, and no
    transport of a closed loop can be closed through it. Its connections are shut down
    now (``shutdown(SHUT_RDWR)``: the server sees them end, a watch stream or long poll
    is no longer held) and the session is closed in the running loop, in a task named
    ``name`` (aiohttp then only marks its connector closed and drops its pool: no
    "Unclosed client session" or "Unclosed connector"), ignoring ``errors`` (the
    registry's own) and ``RuntimeError``. The descriptors themselves are closed only when
    the garbage collector collects their transports (a ``ResourceWarning``, ``unclosed
    transport`` or ``unclosed <socket...>``, for each then): closing them needs the
    closed loop. Sessions inherited in a forked child are not handled here
    (:func:`drop_inherited_sockets`)."""
    for sock in session_sockets(session):
        with contextlib.suppress(OSError):
            _shut_down(sock)

    async def close_quietly() -> None:
        with contextlib.suppress(*errors, RuntimeError):
            await session.close()

    task = asyncio.get_running_loop().create_task(close_quietly(), name=name)
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


_Held = TypeVar("_Held")


async def close_per_loop(held: Mapping[asyncio.AbstractEventLoop,
                                       tuple[_Held, asyncio.Task[None]]],
                         abandon: Callable[[_Held], None], timeout_s: float) -> None:
    """Close what a registry holds per event loop (an HTTP session or client, each with
    its owner task, which closes it when cancelled), from the running loop: the running
    loop's owner is cancelled and awaited; one already done closed it; one of a loop
    closed with its owner pending never runs, so the held object is ``abandon``-ed
    (:func:`abandon_session`); another thread's running loop cancels its owner there, and
    this waits (``timeout_s`` at most: a loop that is busy, or stopped without being
    closed, is not waited for long; its owner closes it when that loop runs again) until
    it ended, abandoning it if that loop was closed meanwhile. Ends with the running
    loop's abandoned closes awaited."""
    running = asyncio.get_running_loop()
    elsewhere: dict[asyncio.Future[None],
                    tuple[asyncio.AbstractEventLoop, _Held, asyncio.Task[None]]] = {}
    for loop, (thing, owner) in held.items():
        if loop is running:
            owner.cancel()  # it closes what it holds
            await asyncio.gather(owner, return_exceptions=True)
        elif owner.done():
            pass  # closed by its owner
        elif loop.is_closed():  # closed with the owner pending: it never runs
            abandon(thing)
        else:  # another thread's loop: closed there by its owner
            ended: asyncio.Future[None] = running.create_future()
            try:
                loop.call_soon_threadsafe(_cancel_and_tell, owner, running, ended)
            except RuntimeError:  # that loop was closed meanwhile
                abandon(thing)
            else:
                elsewhere[ended] = (loop, thing, owner)
    if elsewhere:
        await asyncio.wait(elsewhere, timeout=timeout_s)
        for ended, (loop, thing, owner) in elsewhere.items():
            ended.cancel()
            if loop.is_closed() and not owner.done():  # closed while we waited
                abandon(thing)
    await asyncio.gather(*[t for t in _abandoned if t.get_loop() is running],
                         return_exceptions=True)


def close_per_loop_nowait(held: Mapping[asyncio.AbstractEventLoop,
                                         tuple[_Held, asyncio.Task[None]]],
                          abandon: Callable[[_Held], None]) -> None:
    """:func:`close_per_loop` without waiting, for a registry's ``close()`` cancelled
    before it got there: each owner task is cancelled in its own loop (it closes what it
    holds, at once: the registry is closed), and what a loop closed with its owner pending
    holds is ``abandon``-ed."""
    running = asyncio.get_running_loop()
    for loop, (thing, owner) in held.items():
        if owner.done():
            continue  # closed by its owner
        if loop is running:
            owner.cancel()
        elif loop.is_closed():
            abandon(thing)
        else:
            try:
                loop.call_soon_threadsafe(owner.cancel)
            except RuntimeError:  # that loop was closed meanwhile
                abandon(thing)


def _cancel_and_tell(owner: asyncio.Task[None], waiter_loop: asyncio.AbstractEventLoop,
                     ended: asyncio.Future[None]) -> None:
    """In ``owner``'s loop: cancel it (it closes what it holds) and, once it has ended,
    set ``ended`` (a future of ``waiter_loop``, another thread's) in that loop."""
    owner.cancel()
    owner.add_done_callback(lambda _: _tell(waiter_loop, ended))


def _tell(loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None]) -> None:
    """Set ``ended`` in its ``loop`` (thread-safe); nothing if that loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set_once, ended)


def _set_once(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


def cancelled_by_close(closed: bool) -> bool:
    """Whether a ``CancelledError`` the current task caught comes from its registry's
    ``close()`` (``closed``: the registry is closed) rather than a cancel of the task:
    the registry's close closes its aiohttp session, whose connector cancels the name
    lookups in flight (``TCPConnector._close`` cancels its ``_resolve_host_tasks``), and
    a request waiting for one gets a ``CancelledError`` though nobody cancelled its task
    (``cancelling() == 0``). A real cancel of the task (its ``cancelling()`` above 0: a
    ``task.cancel()``, a timeout, a TaskGroup) is not one, whether or not the registry
    closed meanwhile: it must propagate."""
    if not closed:
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _lookup(host: str, port: int, family: int) -> list[aiohttp.abc.ResolveResult]:
    """``host``'s addresses as aiohttp's :class:`~aiohttp.ThreadedResolver` gives them
    (aiohttp 3.14: ``getaddrinfo`` with ``AI_ADDRCONFIG``, and on Windows ``localhost``
    asked again without it if that fails; numeric, one per ``getaddrinfo`` entry; a
    link-local IPv6 address with its scope as ``getnameinfo`` writes it), in the calling
    thread (blocks).

    Raises:
        socket.gaierror: the name does not resolve (aiohttp's ClientConnectorDNSError).
    """
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, _AI_ADDRCONFIG)
    except socket.gaierror:
        # Windows refuses localhost with AI_ADDRCONFIG while no network is active
        # (WSAHOST_NOT_FOUND): aiohttp's resolvers ask again without the flag
        if not (_IS_WINDOWS and host.rstrip(".").casefold() == "localhost"):
            raise
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, 0)
    results: list[aiohttp.abc.ResolveResult] = []
    for fam, _, proto, _, address in infos:
        if fam == socket.AF_INET6:
            if len(address) < 3:  # no IPv6 in this Python build or host
                continue
            if address[3]:  # a scope id: link-local, "fe80::1%eth0"
                text, serv = socket.getnameinfo(
                    (str(address[0]), int(address[1]), int(address[2]), int(address[3])),
                    socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                found, found_port = text, int(serv)
            else:
                found, found_port = str(address[0]), int(address[1])
        elif fam == socket.AF_INET:
            found, found_port = str(address[0]), int(address[1])
        else:
            continue
        results.append(aiohttp.abc.ResolveResult(
            hostname=host, host=found, port=found_port, family=fam, proto=proto,
            flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
    return results


class OwnThreadsResolver(aiohttp.abc.AbstractResolver):
    """The resolver of a registry's aiohttp connectors: ``getaddrinfo`` on the
    registry's own threads (:class:`LookupThreads`: ``meshkit-etcd-dns``,
    ``meshkit-consul-dns``), not on the event loop's default executor (aiohttp's default
    resolver, ``loop.getaddrinfo``), which an application may fill with its own blocking
    work (``asyncio.to_thread``): a keep-alive's lookup of the agent's or a member's name
    then waited behind it and the lease expired or the TTL check went critical. aiohttp
    calls it only for host names (an IP address is used as is) whose answer is not in its
    DNS cache (10 s). One per connector; holds nothing of an event loop, so it serves the
    connectors of every loop the registry runs in (and, holding the registry's
    :class:`LookupThreads`, not its pool, uses a forked child's own pool there).

    Args:
        threads: the registry's lookup pool, shut down by the registry's ``close()``.
        owner: the registry as error messages name it, e.g. ``"etcd registry"``.
    """

    __slots__ = ("_owner", "_threads")

    def __init__(self, threads: LookupThreads, owner: str) -> None:
        self._threads = threads
        self._owner = owner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[aiohttp.abc.ResolveResult]:
        """``host``'s addresses for ``port`` (``family``: aiohttp's connector passes
        ``AF_UNSPEC``, both).

        Raises:
            socket.gaierror: the name does not resolve.
            OSError: the registry was closed (its lookup threads are shut down).
        """
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._threads.pool, _lookup, host, port, family)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise OSError(f"no lookup of {host!r}: the {self._owner} is closed") from exc
        return await future

    async def close(self) -> None:
        """Nothing to release: the registry owns the threads."""
