"""Host literals: an IP address (IPv6 bracketed or not) or a DNS host name, as options take
them, and the forms each consumer needs (RFC 3986 section 3.2.2: brackets belong to the
``host:port`` and URI syntax, not to the address itself).

A low-level module (standard library only), so any meshkit package may use it.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from meshkit.errors import ConfigError

__all__ = ["bare_host", "check_host", "is_loopback", "is_unspecified", "uri_host"]

# a DNS name as RFC 1123 allows it (labels of letters, digits and hyphens, no hyphen at
# either end), plus "_" (service records, Docker/Compose names); an optional trailing dot
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_DOTTED_RE = re.compile(r"[0-9.]+")
# an IPv6 zone (RFC 6874's ZoneID: unreserved characters); ipaddress takes any but % and /
_ZONE_RE = re.compile(r"[A-Za-z0-9._~-]+")


def bare_host(host: str) -> str:
    """``host`` without the brackets of a bracketed IPv6 literal: ``"[::1]"`` -> ``"::1"``;
    anything else as it is. A bracketed literal whose zone is written as in a URI (RFC
    6874: ``%25`` and at least one character more, ``"[fe80::1%25eth0]"``) has its zone's
    ``%`` unescaped (``"fe80::1%eth0"``), so that the address it names is the one
    :func:`uri_host` writes back (``"[fe80::1%25eth0]"``), and is registered and announced
    as that address."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        address, pct, zone = inner.partition("%")
        if pct and zone.startswith("25") and len(zone) > 2:
            return f"{address}%{zone[2:]}"
        return inner
    return host


def uri_host(host: str) -> str:
    """``host`` as the host part of ``host:port`` or a URI: an IPv6 literal bracketed once
    (``"::1"`` and ``"[::1]"`` -> ``"[::1]"``) with its zone's ``%`` written ``%25``
    (RFC 6874: ``"fe80::1%eth0"`` -> ``"[fe80::1%25eth0]"``; grpc percent-decodes
    ``host:port`` text, so ``[::1%11]`` would be the zone byte 0x11, and URL parsers do the
    same), anything else as it is.

    A bracketed host whose zone is already so escaped (``"[fe80::1%25eth0]"``, URI text:
    ``%25`` and at least one character more) names zone ``eth0`` (see :func:`bare_host`),
    so that ``uri_host`` of its own result is that result; an unbracketed one is an
    address as written outside URIs (RFC 4007), whose zone is escaped whatever it is
    (``"fe80::1%25"`` -> zone ``25``)."""
    bare = bare_host(host)
    if ":" not in bare:
        return bare
    address, pct, zone = bare.partition("%")
    if pct:
        return f"[{address}%25{zone}]"
    return f"[{bare}]"


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` (bracketed or not) as an address, an IPv4-mapped IPv6 one
    (``::ffff:127.0.0.1``) as the IPv4 address it maps (Python 3.11's ``ipaddress`` finds
    ``::ffff:127.0.0.1`` no loopback); ``None`` for a name."""
    try:
        address = ipaddress.ip_address(bare_host(host))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_unspecified(host: str) -> bool:
    """Whether ``host`` is the unspecified (wildcard) address of IPv4 or IPv6, however it
    is spelled: ``"0.0.0.0"``, ``"::"``, ``"[::]"``, ``"0:0:0:0:0:0:0:0"``, ``"::0"``,
    ``"::ffff:0.0.0.0"``."""
    address = _address(host)
    return address is not None and address.is_unspecified


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback: ``127.0.0.0/8`` (also IPv4-mapped,
    ``::ffff:127.0.0.1``), ``::1`` (bracketed or not) or ``localhost`` (any case, as
    written: not ``localhost.``).

    Other ``.localhost`` names (``app.localhost``), which RFC 6761 section 6.3 says
    resolve to loopback, are not counted: a caller lets plain text through to a loopback
    host (a JWKS URL over ``http``), and the C library's resolver (glibc with ``hosts:
    files dns``, no ``nss-myhostname``) does not answer such a name itself but asks the
    network's DNS server, whose answer could be any address. Nor is ``localhost.`` with
    its root dot, for the same reason: glibc's ``files`` backend matches it against no
    ``/etc/hosts`` line and asks DNS (glibc 2.36: ``getent ahosts localhost.`` queries
    the nameserver). Only a resolver of meshkit's own that answered them with loopback
    would make them safe to count."""
    if bare_host(host).lower() == "localhost":
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def _inet_aton_reads(value: str) -> str | None:
    """The IPv4 address ``inet_aton`` (and so ``getaddrinfo``, grpc's resolver and
    ``ping``) reads ``value`` as, e.g. ``"0x7f.1"`` -> ``"127.0.0.1"``; ``None`` for a
    name it does not read as one."""
    for text in dict.fromkeys((value, value.rstrip("."))):
        try:
            return socket.inet_ntoa(socket.inet_aton(text))
        except (OSError, ValueError):
            continue
    return None


def check_host(name: str, value: object) -> None:
    """Check that option ``name`` is a host: an IPv4 address, an IPv6 address (bracketed or
    not, with an optional ``%zone`` of letters, digits, ``.``, ``_``, ``~`` and ``-``, RFC
    6874's unreserved characters: ``fe80::1%eth0``) or a DNS host name (RFC 1123, at
    most 253 characters).

    Raises:
        ConfigError: anything else (an empty string, unbalanced brackets, a bracketed
            name, spaces, also in a zone: ``"fe80::1%eth0 "``..., an IPv4 address in
            another form than four decimal numbers, ``"127.1"`` or ``"0x0"``, which
            resolvers read as an address), naming the option and quoting the value.
    """
    if isinstance(value, str) and value:
        bare = bare_host(value)
        if ":" in bare or bare != value:  # an IPv6 literal, or something bracketed
            _, pct, zone = bare.partition("%")
            try:
                ipaddress.IPv6Address(bare)
                if not pct or _ZONE_RE.fullmatch(zone) is not None:
                    return
            except ValueError:
                pass
        elif len(value) <= 253 and _NAME_RE.fullmatch(value) is not None:
            if not _DOTTED_RE.fullmatch(value):
                if not _inet_aton_reads(value):
                    return  # a host name
                # "0x0", "0x7f.1": no name but an IPv4 address the resolver reads
                # (inet_aton's hex/octal/short forms), which is_unspecified and
                # is_loopback cannot see: "0x0" bound every interface and was registered
                raise ConfigError(
                    f"{name} must be an IP address (IPv4 as four decimal numbers) or a "
                    f"host name, got {value!r}, which resolvers read as the IPv4 address "
                    f"{_inet_aton_reads(value)}")
            try:  # all digits and dots: an IPv4 address, or nothing
                ipaddress.IPv4Address(value)
                return
            except ValueError:
                pass
    raise ConfigError(f"{name} must be an IP address (IPv6 bracketed or not) or a host "
                      f"name, got {value!r}")
