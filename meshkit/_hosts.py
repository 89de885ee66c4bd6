"""Host literals: an IP address (IPv6 bracketed or not) or a DNS host name, as options take
them, and the forms each consumer needs (RFC 3986 section 3.2.2: brackets belong to the
``host:port`` and URI syntax, not to the address itself).

A low-level module (standard library only), so any meshkit package may use it.
"""

from __future__ import annotations

import ipaddress
import re

from meshkit.errors import ConfigError

__all__ = ["bare_host", "check_host", "is_loopback", "is_unspecified", "uri_host"]

# a DNS name as RFC 1123 allows it (labels of letters, digits and hyphens, no hyphen at
# either end), plus "_" (service records, Docker/Compose names); an optional trailing dot
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_DOTTED_RE = re.compile(r"[0-9.]+")


def bare_host(host: str) -> str:
    """``host`` without the brackets of a bracketed IPv6 literal: ``"[::1]"`` -> ``"::1"``;
    anything else as it is."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def uri_host(host: str) -> str:
    """``host`` as the host part of ``host:port`` or a URI: an IPv6 literal bracketed once
    (``"::1"`` and ``"[::1]"`` -> ``"[::1]"``), anything else as it is."""
    bare = bare_host(host)
    return f"[{bare}]" if ":" in bare else bare


def is_unspecified(host: str) -> bool:
    """Whether ``host`` is the unspecified (wildcard) address of IPv4 or IPv6, however it
    is spelled: ``"0.0.0.0"``, ``"::"``, ``"[::]"``, ``"0:0:0:0:0:0:0:0"``, ``"::0"``."""
    try:
        return ipaddress.ip_address(bare_host(host)).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback: ``127.0.0.0/8``, ``::1`` (bracketed
    or not) or ``localhost``."""
    bare = bare_host(host)
    if bare.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def check_host(name: str, value: object) -> None:
    """Check that option ``name`` is a host: an IPv4 address, an IPv6 address (bracketed or
    not, with an optional ``%zone``) or a DNS host name (RFC 1123, at most 253
    characters).

    Raises:
        ConfigError: anything else (an empty string, unbalanced brackets, a bracketed
            name, spaces...), naming the option and quoting the value.
    """
    if isinstance(value, str) and value:
        bare = bare_host(value)
        if ":" in bare or bare != value:  # an IPv6 literal, or something bracketed
            try:
                ipaddress.IPv6Address(bare)
                return
            except ValueError:
                pass
        elif len(value) <= 253 and _NAME_RE.fullmatch(value) is not None:
            if not _DOTTED_RE.fullmatch(value):
                return  # a host name
            try:  # all digits and dots: an IPv4 address, or nothing
                ipaddress.IPv4Address(value)
                return
            except ValueError:
                pass
    raise ConfigError(f"{name} must be an IP address (IPv6 bracketed or not) or a host "
                      f"name, got {value!r}")
