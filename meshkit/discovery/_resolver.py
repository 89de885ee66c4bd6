"""Name lookups of the registries' aiohttp connectors on threads of their own.

aiohttp's default resolver (``ThreadedResolver``) calls ``loop.getaddrinfo``, which runs
in the event loop's default executor: an application that fills that executor with its
own blocking work (``asyncio.to_thread``, ``run_in_executor(None, ...)``; 6 threads on a
2-core box) held every lookup of a registry's agent or member names behind it, so the
keep-alives (etcd's lease, Consul's TTL passes) timed out and a merely busy instance left
discovery. :class:`OwnThreadsResolver` looks names up on a pool the registry owns
(``lookup_threads``), shut down when the registry closes.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import aiohttp.abc

__all__ = ["DNS_THREADS", "OwnThreadsResolver", "lookup_threads"]

#: getaddrinfo's flags as aiohttp's ThreadedResolver passes them (AI_ADDRCONFIG, masked
#: where the platform has AI_MASK)
_AI_ADDRCONFIG = socket.AI_ADDRCONFIG & getattr(socket, "AI_MASK", ~0)
#: threads of a registry's name lookups: one stuck lookup (a DNS server that does not
#: answer) leaves one for the other names
DNS_THREADS = 2


def lookup_threads(registry: str) -> ThreadPoolExecutor:
    """A registry's lookup pool: :data:`DNS_THREADS` threads named ``meshkit-<registry>-dns``
    (e.g. ``registry="etcd"``), started at the first lookup (none for agents or members
    given by IP address, which aiohttp never resolves). Its owner shuts it down when it
    closes (``shutdown(wait=False, cancel_futures=True)``: a stuck lookup is not waited
    for)."""
    return ThreadPoolExecutor(max_workers=DNS_THREADS,
                              thread_name_prefix=f"meshkit-{registry}-dns")


def _lookup(host: str, port: int, family: int) -> list[aiohttp.abc.ResolveResult]:
    """``host``'s addresses as aiohttp's :class:`~aiohttp.ThreadedResolver` gives them
    (numeric, one per ``getaddrinfo`` entry; a link-local IPv6 address with its scope as
    ``getnameinfo`` writes it), in the calling thread (blocks).

    Raises:
        socket.gaierror: the name does not resolve (aiohttp's ClientConnectorDNSError).
    """
    results: list[aiohttp.abc.ResolveResult] = []
    for fam, _, proto, _, address in socket.getaddrinfo(host, port, family,
                                                        socket.SOCK_STREAM, 0,
                                                        _AI_ADDRCONFIG):
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
    registry's own threads (:func:`lookup_threads`: ``meshkit-etcd-dns``,
    ``meshkit-consul-dns``), not on the event loop's default executor (aiohttp's default
    resolver, ``loop.getaddrinfo``), which an application may fill with its own blocking
    work (``asyncio.to_thread``): a keep-alive's lookup of the agent's or a member's name
    then waited behind it and the lease expired or the TTL check went critical. aiohttp
    calls it only for host names (an IP address is used as is) whose answer is not in its
    DNS cache (10 s). One per connector; holds nothing of an event loop, so it serves the
    connectors of every loop the registry runs in.

    Args:
        executor: the registry's lookup pool, shut down by the registry's ``close()``.
        owner: the registry as error messages name it, e.g. ``"etcd registry"``.
    """

    __slots__ = ("_executor", "_owner")

    def __init__(self, executor: ThreadPoolExecutor, owner: str) -> None:
        self._executor = executor
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
                self._executor, _lookup, host, port, family)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise OSError(f"no lookup of {host!r}: the {self._owner} is closed") from exc
        return await future

    async def close(self) -> None:
        """Nothing to release: the registry owns the threads."""
