"""Method patterns: the one way meshkit maps gRPC method names to per-method settings.

Every per-method setting uses :class:`MethodMatcher`: retry policies
(``RetryOptions.methods``), deadlines (``DialOptions.method_timeouts``), telemetry
(``TelemetryOptions.quiet_methods``), rate limits (``RateLimitOptions.rules``), JWT
(``JWTAuthOptions.public_methods``/``method_scopes``) and authorization
(``AuthzPolicy.rules``).

**Spellings.** A pattern names a service and a method, ``<service>/<method>``:

* full: ``"/ecom.v1.OrderService/PlaceOrder"`` (what gRPC reports), or the same without
  the leading slash, ``"ecom.v1.OrderService/PlaceOrder"``;
* short (package left out): ``"OrderService/PlaceOrder"``;
* globs (:mod:`fnmatch` wildcards ``*``, ``?``, ``[...]``, case-sensitive, never crossing
  the ``/``): ``"OrderService/*"``, ``"/ecom.v1.OrderService/*"``, ``"*/Get*"``,
  ``"ecom.*/*"``; ``"*"`` alone means every method (the same as ``"*/*"``).

The service part is compared with the method's full service name (``ecom.v1.OrderService``)
and with its package-less name (``OrderService``); it matches if either does. The method
part is compared with the method name.

**Precedence** (one rule for every user; the first step that decides wins):

1. an exact pattern (no wildcard) beats any glob; of two exact patterns matching one method
   (``"/ecom.v1.OrderService/PlaceOrder"`` and ``"OrderService/PlaceOrder"``) the full one
   wins, being the longer (rule 2);
2. the *longest* pattern wins: the one with the most literal characters, i.e. characters
   that are not wildcards (``*``, ``?`` and a whole ``[...]`` set count 0; the leading ``/``
   is not counted, the ``/`` between service and method is). So ``"OrderService/*"`` (13)
   beats ``"*/Get*"`` (4), and ``"/ecom.v1.OrderService/*"`` (21) beats
   ``"OrderService/Get*"`` (16): mix spellings with care;
3. then the one with fewer ``*``;
4. then the pattern whose normalized spelling (leading ``/`` removed) sorts first by code
   point. Mapping order never matters, so the answer is deterministic.

Methods no pattern matches get the matcher's default.

**Names that are no method path.** A method is ``/<service>/<method>``: one leading ``/``
(or none, as a client may spell it), a non-empty service and method name, no other
``/``. Any other name (``//pkg.Svc/M``, ``/x/pkg.Svc/M``, ``/pkg.Svc/a/M``,
``/pkg.Svc/``), which only a catch-all generic handler serves, gets the value of ``"*"``
(every method) when the mapping has it, else the default: no exact, short or glob
pattern, so ``public_methods=("Svc/M",)`` or ``"*/Get*"`` opens no such name.

Two spellings of the same pattern (``"/a.B/C"`` and ``"a.B/C"``, ``"*"`` and ``"*/*"``)
in one mapping are a :class:`~meshkit.errors.ConfigError`.

**Checked against the methods served.** When a :class:`~meshkit.MeshServer` starts, the
patterns of its server-side settings (``AuthzPolicy.rules``, ``JWTAuthOptions``'
``public_methods`` and ``method_scopes``, ``AuthOptions.exempt_methods``,
``RateLimitOptions.rules``, ``TelemetryOptions.quiet_methods``) are checked against the
methods it serves (:func:`check_served`): an exact full name of a service it serves that
names no method of that service (``"/ecom.v1.OrderService/PlaceOder"``) is a
:class:`~meshkit.errors.ConfigError` (a typo: its calls would get the default, a
default that may allow what the key was to refuse); any other pattern that matches no
method served (a service this server does not serve, a short name, a glob) is named in
one warning, not refused, since a policy may be shared by servers of several services.
Neither when a generic handler of the server may serve any name (one that is no
``grpc.method_handlers_generic_handler``).

**Cost.** A method's answer is resolved on its first call and cached (at most
:data:`MAX_CACHED_METHODS` names, the oldest forgotten first, since a generic handler
may see any method name), so a call pays one dict lookup.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from fnmatch import translate
from typing import Generic, TypeVar

from meshkit.errors import ConfigError

__all__ = ["HEALTH_METHODS", "MAX_CACHED_METHODS", "MethodMatcher", "check_served",
           "normalized", "outranks", "short_name"]

_V = TypeVar("_V")

MAX_CACHED_METHODS = 4096
"""Bound on a :class:`MethodMatcher`'s per-method cache (oldest entries evicted first)."""

HEALTH_METHODS = frozenset(("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                            "/grpc.health.v1.Health/List"))
"""The methods of the gRPC health service (``health.proto``), which the rate limit leaves
to rules naming a service and deadline admission treats as probes; not any other name
under its path, which a caller can send to a catch-all generic handler."""

_GLOB_CHARS = frozenset("*?[")
_SET_RE = re.compile(r"\[!?\]?[^\]]*\]")


def short_name(method: str) -> str:
    """``/pkg.Service/Method`` -> ``Service/Method`` (the package-less form)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def normalized(pattern: str) -> str:
    """A valid ``pattern``'s one spelling: ``"*"`` as ``"*/*"``, the leading ``/`` removed
    (two patterns with the same are the same pattern)."""
    return "*/*" if pattern == "*" else pattern[1:] if pattern.startswith("/") else pattern


def outranks(a: str, b: str) -> bool:
    """Whether valid pattern ``a`` takes precedence over valid pattern ``b`` for a method
    both match (the module's precedence; ``False`` for the same pattern)."""
    return _Pattern(a, "").key < _Pattern(b, "").key


def _literal_count(part: str) -> int:
    """Characters of ``part`` that are not wildcards (a ``[...]`` set counts 0)."""
    return len(_SET_RE.sub("", part).replace("*", "").replace("?", ""))


class _Pattern:
    """One validated pattern, split and compiled."""

    __slots__ = ("glob", "key", "method", "normal", "service", "text")

    def __init__(self, text: str, where: str) -> None:
        if not isinstance(text, str):
            raise ConfigError(f"{where}: a method pattern must be a string, got {text!r}")
        if not text or text != text.strip() or any(c.isspace() for c in text):
            raise ConfigError(
                f"{where}: method pattern {text!r} is empty or contains whitespace")
        normal = normalized(text)
        service, sep, method = normal.partition("/")
        if not sep or not service or not method or "/" in method:
            raise ConfigError(
                f"{where}: method pattern {text!r} must be '<service>/<method>' "
                f"('/pkg.Service/Method', 'pkg.Service/Method', 'Service/Method', globs "
                f"like 'Service/*' or '*/Get*') or '*'")
        self.text = text
        self.normal = normal
        self.glob = bool(_GLOB_CHARS.intersection(normal))
        lit = _literal_count(service) + 1 + _literal_count(method)
        # Sort key implementing the module's precedence: smaller is more specific.
        self.key = (self.glob, -lit, normal.count("*"), normal)
        self.service: Callable[[str], object] = re.compile(translate(service)).match
        self.method: Callable[[str], object] = re.compile(translate(method)).match

    def matches(self, service: str, short: str, name: str) -> bool:
        return bool(self.method(name)) and bool(self.service(service) or self.service(short))


class MethodMatcher(Generic[_V]):
    """Maps gRPC method names to values by method pattern (see the module docstring for
    the spellings and the precedence: exact > longest glob > default).

    Args:
        entries: ``{pattern: value}``, e.g. ``{"OrderService/*": 5.0,
            "/ecom.v1.OrderService/PlaceOrder": 2.0}``; a sequence of patterns is accepted
            as ``{pattern: True}`` by :meth:`of`.
        default: the value of methods no pattern matches.
        where: what the patterns configure, for error messages (default
            ``"method patterns"``), e.g. ``"RetryOptions.methods"``.

    Raises:
        ConfigError: a pattern that is not a string, empty or with whitespace, without a
            ``/`` (other than ``"*"``), with more than one ``/`` after the leading one, or
            a second spelling of another pattern; the bad pattern is quoted.
    """

    __slots__ = ("_cache", "_default", "_every", "_exact", "_globs", "_patterns")

    def __init__(self, entries: Mapping[str, _V], default: _V, *,
                 where: str = "method patterns") -> None:
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{where} must be a mapping of method patterns, got {entries!r}")
        seen: dict[str, str] = {}
        patterns: list[tuple[_Pattern, _V]] = []
        for text, value in entries.items():
            p = _Pattern(text, where)
            if p.normal in seen:
                raise ConfigError(f"{where}: method patterns {seen[p.normal]!r} and {text!r} "
                                  f"are the same pattern")
            seen[p.normal] = text
            patterns.append((p, value))
        patterns.sort(key=lambda pv: pv[0].key)
        self._patterns = tuple(patterns)
        self._exact: dict[str, tuple[str | None, _V]] = {
            p.normal: (p.text, v) for p, v in patterns if not p.glob}
        self._globs = tuple((p, v) for p, v in patterns if p.glob)
        self._default: tuple[str | None, _V] = (None, default)
        # what a name that is no gRPC method path gets: "*" (every method) or the default
        self._every: tuple[str | None, _V] = next(
            ((p.text, v) for p, v in patterns if p.normal == "*/*"), self._default)
        self._cache: dict[str, tuple[str | None, _V]] = {}

    @classmethod
    def of(cls, patterns: Iterable[str], *,
           where: str = "method patterns") -> MethodMatcher[bool]:
        """A matcher answering ``True`` for methods any of ``patterns`` matches, else
        ``False`` (for sets of methods, e.g. ``quiet_methods``, ``public_methods``).

        Raises:
            ConfigError: ``patterns`` is a string rather than a sequence, or a bad
                pattern (as the constructor).
        """
        if isinstance(patterns, str):
            raise ConfigError(f"{where} must be a tuple of method patterns, got the string "
                              f"{patterns!r}")
        return MethodMatcher(dict.fromkeys(patterns, True), False, where=where)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The patterns as given, most specific first (the order they are tried in)."""
        return tuple(p.text for p, _ in self._patterns)

    def values(self) -> tuple[_V, ...]:
        """Every value a method can get: the patterns' (most specific first), then the
        default."""
        return (*(v for _, v in self._patterns), self._default[1])

    def lookup(self, method: str) -> _V:
        """The value for full method name ``method`` (``"/pkg.Svc/Method"``): one dict
        lookup once the method has been seen."""
        try:
            return self._cache[method][1]
        except KeyError:
            return self._resolve(method)[1]

    def match(self, method: str) -> tuple[str | None, _V]:
        """``(pattern as written, value)`` for ``method``; ``(None, default)`` when no
        pattern matches. Cached like :meth:`lookup`."""
        try:
            return self._cache[method]
        except KeyError:
            return self._resolve(method)

    def _resolve(self, method: str) -> tuple[str | None, _V]:
        service, sep, name = (method[1:] if method.startswith("/") else method).partition("/")
        found: tuple[str | None, _V] | None
        if not sep or not service or not name or "/" in name:
            # no gRPC method path (module docstring): "*" alone takes it, else the default
            found = self._every
        else:
            short = service.rsplit(".", 1)[-1]
            found = self._exact.get(f"{service}/{name}") or self._exact.get(f"{short}/{name}")
            if found is None:
                found = self._default
                for p, v in self._globs:
                    if p.matches(service, short, name):
                        found = (p.text, v)
                        break
        cache = self._cache
        if len(cache) >= MAX_CACHED_METHODS:
            # FIFO eviction; suppress the errors of a race with another thread.
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del cache[next(iter(cache))]
        cache[method] = found
        return found


_SHOWN_METHODS = 12
"""Methods of a service named at most in :func:`check_served`'s error."""


def check_served(patterns: Iterable[tuple[str, Iterable[str]]], methods: Collection[str],
                 ) -> list[tuple[str, str]]:
    """Check method patterns against the methods a server serves (module docstring).

    Args:
        patterns: ``(where, patterns)`` pairs, ``where`` naming the setting for messages
            (``"AuthzPolicy.rules"``); the patterns as written (valid ones: each setting
            checked its own when it was built).
        methods: the full names (``"/pkg.Svc/Method"``) of every method the server
            serves; the server's services are theirs (each with every method it has).

    Returns:
        ``(where, pattern)`` of each pattern that matches none of ``methods`` and is no
        error, in the order given (for a warning).

    Raises:
        ConfigError: an exact pattern whose service part is the full name of a service
            served and whose method part names no method of it; the setting, the pattern
            and the service's methods quoted.
    """
    by_service: dict[str, list[str]] = {}
    split: list[tuple[str, str, str]] = []
    for method in methods:
        service, _, name = method.lstrip("/").rpartition("/")
        by_service.setdefault(service, []).append(name)
        split.append((service, service.rsplit(".", 1)[-1], name))
    unmatched: list[tuple[str, str]] = []
    for where, texts in patterns:
        for text in texts:
            p = _Pattern(text, where)
            if any(p.matches(*m) for m in split):
                continue
            service = p.normal.partition("/")[0]
            names = by_service.get(service)
            if not p.glob and names is not None:
                shown = ", ".join(sorted(names)[:_SHOWN_METHODS])
                more = ", ..." if len(names) > _SHOWN_METHODS else ""
                raise ConfigError(
                    f"{where}: method pattern {text!r} names no method of {service!r}, "
                    f"which this server serves (its methods: {shown}{more}): a typo? Calls "
                    "it was meant for would get the default")
            unmatched.append((where, text))
    return unmatched
