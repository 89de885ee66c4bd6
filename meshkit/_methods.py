"""Per-method lookup tables: glob patterns on gRPC method names, resolved once per method."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Generic, TypeVar

from meshkit.errors import ConfigError

__all__ = ["MethodTable", "short_name"]

_V = TypeVar("_V")


def short_name(method: str) -> str:
    """``/pkg.Service/Method`` -> ``Service/Method`` (the package-less form)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


class MethodTable(Generic[_V]):
    """Maps gRPC method names to values by pattern, caching the answer per method.

    Patterns (``fnmatch`` globs) match either the full method (``/ecom.v1.OrderService/
    PlaceOrder``), the same without the leading slash, or the short form
    (``OrderService/PlaceOrder``); e.g. ``"OrderService/*"`` or ``"*/Get*"``. The most
    specific pattern wins: an exact name over a glob, then the longest pattern.

    Args:
        entries: ``{pattern: value}``.
        default: value for methods no pattern matches.

    Raises:
        ConfigError: an empty pattern.
    """

    __slots__ = ("_cache", "_default", "_patterns")

    def __init__(self, entries: Mapping[str, _V], default: _V) -> None:
        for pattern in entries:
            if not pattern or not isinstance(pattern, str):
                raise ConfigError(f"method pattern must be a non-empty string, got {pattern!r}")
        self._patterns = sorted(entries.items(),
                                key=lambda kv: (any(c in kv[0] for c in "*?["), -len(kv[0])))
        self._default = default
        self._cache: dict[str, _V] = {}

    def get(self, method: str) -> _V:
        """The value for ``method`` (computed on first use, then a dict lookup)."""
        try:
            return self._cache[method]
        except KeyError:
            pass
        forms = (method, method.lstrip("/"), short_name(method))
        value = self._default
        for pattern, v in self._patterns:
            if any(fnmatch.fnmatchcase(f, pattern) for f in forms):
                value = v
                break
        if len(self._cache) < 10_000:
            self._cache[method] = value
        return value
