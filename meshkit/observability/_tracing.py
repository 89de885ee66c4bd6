"""Tracing set-up from ``OTEL_*`` variables, metadata propagation, and the reference
interceptors of opentelemetry-instrumentation-grpc."""

from __future__ import annotations

import dis
import logging
import os
import random
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableSequence, Sequence
from contextvars import ContextVar
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import grpc
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from meshkit._config import check_bool
from meshkit.errors import ConfigError
from meshkit.observability._logging import SPAN_CONTEXT_IS_TUPLE, get_logger


def _sdk_refuses_at_import(var: str = "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT") -> str | None:
    """``var``'s value when the SDK's import would raise for it, else None: importing
    ``opentelemetry.sdk.trace`` reads ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` (a module-level
    constant) and raises a bare ``ValueError`` unless it is empty (blanks stripped: the
    SDK's "no limit"; the word ``unset`` is refused too) or an integer >= 0, which
    failed ``import meshkit.server`` and ``meshkit.channel`` even with
    ``OTEL_SDK_DISABLED=true`` or no tracing set up. The variable is then held out of the
    environment for that import only; configuring tracing still checks it
    (``ConfigError`` naming it, :func:`_batch_settings`)."""
    raw = os.environ.get(var)
    if raw is None or not raw.strip():  # (the SDK's _ENV_VALUE_UNSET is "")
        return None
    try:
        return None if int(raw.strip()) >= 0 else raw
    except ValueError:
        return raw


_HELD_OUT = _sdk_refuses_at_import()
try:  # optional: ``meshkit[otel]`` (configure_tracing, span export)
    if _HELD_OUT is not None:
        del os.environ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"]
    import opentelemetry.sdk.trace as _sdk
    import opentelemetry.sdk.trace.id_generator  # binds _sdk.id_generator
    import opentelemetry.sdk.trace.sampling  # noqa: F401  (binds _sdk.sampling)
except ImportError:  # tested with the SDK hidden (tests/observability/test_no_sdk.py)
    _sdk = None  # type: ignore[assignment]
finally:
    if _HELD_OUT is not None:
        os.environ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"] = _HELD_OUT

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

OTEL_EXTRA = "meshkit[otel]"
"""The extra that installs the OpenTelemetry SDK (and the OTLP exporter)."""

__all__ = [
    "PROPAGATION_LOGGERS",
    "BoundedLogFilter",
    "SpanStarter",
    "bound_propagation_warnings",
    "configure_tracing",
    "extract_context",
    "inject_context",
    "inject_span",
    "instrumentor_active",
    "otel_client_interceptors",
    "otel_server_interceptor",
    "parse_traceparent",
    "require_sdk",
    "sdk_available",
    "tracing_wanted",
]

_log = get_logger("meshkit.observability")


class _PropagatorsEnv:
    """While ``opentelemetry.propagate`` is first imported (it builds the global
    propagator from ``OTEL_PROPAGATORS`` then, and raises ``ValueError`` for a name with
    no installed ``opentelemetry_propagator`` entry point: ``b3`` without
    opentelemetry-propagator-b3, a misspelling), the variable reads as the names that can
    be loaded: blanks stripped, as written when an entry point has that name, else
    lower-cased (an enum value is read case-insensitively), each once (the
    specification's deduplication), an unknown one dropped with a warning naming it (the
    specification: warn and ignore a value not recognised); when none is left the
    variable reads as unset (the W3C default). Restored afterwards, also when the import
    (or the warning) raises; nothing changes when the module is already imported, the
    variable unset or every name loadable as written. The variable is the process's:
    another thread reading it during the import sees the loadable names, and one writing
    it then has its value replaced by the restore."""

    def __enter__(self) -> None:
        self.saved: str | None = None
        raw = os.environ.get("OTEL_PROPAGATORS")
        # a blank value goes on (no names: unset below); left as it is, the API looked
        # up the propagator "" and raised ValueError
        if "opentelemetry.propagate" in sys.modules or not raw:
            return
        names = [n.strip() for n in raw.split(",") if n.strip()]
        kept: list[str] = []
        dropped: list[str] = []
        if any(n.lower() == "none" for n in names):
            kept = ["none"]
        else:
            for name in names:  # as written (an installed entry point's own spelling),
                found = next((n for n in dict.fromkeys((name, name.lower()))  # else lower
                              if importlib_metadata.entry_points(
                                  group="opentelemetry_propagator", name=n)), None)
                if found is None:
                    dropped.append(name)
                elif found not in kept:
                    kept.append(found)
        value = ",".join(kept)
        if value == raw:
            return
        if dropped:  # before the variable changes: a log that raises leaves it as it was
            _log.warning("OTEL_PROPAGATORS names propagators that are not installed; "
                         "they are ignored", ignored=dropped, using=value or
                         "tracecontext,baggage", fix="pip install the propagator's package "
                         "(b3, b3multi: opentelemetry-propagator-b3)")
        # the last step of __enter__: __exit__ restores it whatever the import does
        self.saved = raw
        if value:
            os.environ["OTEL_PROPAGATORS"] = value
        else:
            del os.environ["OTEL_PROPAGATORS"]

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            os.environ["OTEL_PROPAGATORS"] = self.saved


with _PropagatorsEnv():
    from opentelemetry import propagate

_SAMPLERS = frozenset({
    "always_on", "always_off", "traceidratio", "parentbased_always_on",
    "parentbased_always_off", "parentbased_traceidratio",
})
_EXPORTERS = frozenset({"otlp", "otlp_proto_grpc", "otlp_proto_http", "console", "none"})
# OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL -> the exporter ``otlp`` means: the OpenTelemetry
# SDK's configurator's mapping (opentelemetry.sdk._configuration); the spec's third
# protocol, http/json, has no Python exporter
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_OTLP_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# the trace exporter entry points of opentelemetry-exporter-otlp(-proto-grpc/-http)
_OTLP_ENTRY_NAMES = ("otlp", "otlp_proto_grpc", "otlp_proto_http")
UNKNOWN_SERVICE = "unknown_service"
"""The OpenTelemetry placeholder ``service.name`` of a process that names no service."""
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


class _MetadataGetter(Getter[Sequence[Any]]):
    """Reads propagation headers from gRPC invocation metadata (a sequence of pairs).
    A header is looked up by its name in lower case, as gRPC metadata keys are (HTTP/2):
    a propagator naming one with capitals (AWS X-Ray's ``X-Amzn-Trace-Id``) finds it.
    Several ``baggage`` entries are one comma-joined value (W3C Baggage: multiple
    headers are allowed and make one list; the API's propagator reads only the first
    value it is given), empty ones left out. Several ``traceparent`` entries are none:
    W3C Trace Context's test suite (``test_traceparent_duplicated``) wants a new trace
    then (HTTP joins repeated fields into one value, which does not parse), where the
    API's propagator took the first entry's."""

    def get(self, carrier: Sequence[Any], key: str) -> list[str] | None:
        key = key.lower()
        found = [v if isinstance(v, str) else v.decode("ascii", "replace")
                 for k, v in carrier if k == key]
        if len(found) > 1:
            if key == "baggage":
                return [",".join(v for v in found if v.strip())]
            if key == "traceparent":  # invalid: ignored, its tracestate with it
                return None
        return found or None

    def keys(self, carrier: Sequence[Any]) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[MutableSequence[tuple[str, str | bytes]]]):
    """Appends propagation headers to outgoing metadata, replacing a previous value (a
    retried or re-injected call must not carry two ``traceparent`` headers), under their
    names in lower case: gRPC refuses a metadata key with capitals, which a propagator
    may give (AWS X-Ray's ``X-Amzn-Trace-Id``: every call failed ``INTERNAL``), as
    opentelemetry-instrumentation-grpc's setter lower-cases them too."""

    def set(self, carrier: MutableSequence[tuple[str, str | bytes]], key: str,
            value: str) -> None:
        key = key.lower()
        for i, (k, _) in enumerate(carrier):
            if k == key:
                carrier[i] = (key, value)
                return
        carrier.append((key, value))


_GETTER = _MetadataGetter()
_SETTER = _MetadataSetter()


def inject_context(metadata: MutableSequence[tuple[str, str | bytes]],
                   context: Any = None) -> None:
    """Write the current (or given) trace context and baggage into outgoing ``metadata``
    with the global propagator (W3C ``traceparent``/``tracestate`` and ``baggage`` by
    default, ``OTEL_PROPAGATORS`` to change).

    Args:
        metadata: a mutable list of ``(key, value)`` pairs, changed in place.
        context: an OpenTelemetry ``Context``; default the current one.

    A ``baggage`` header that would take the request's metadata over grpc core's default
    limit (8 KiB, ``grpc.max_metadata_size``: a server rejects a request over it with
    ``RESOURCE_EXHAUSTED``, at random between it and twice it, so W3C Baggage's 8,192
    bytes alone fail some calls) loses list-members from its end, whole ones (W3C: never
    a partial member), until the metadata fits (:data:`METADATA_BUDGET`), with a warning
    per minute; none left, no header. Only a context that carries baggage pays for the
    check (a lookup in the context otherwise).
    """
    propagate.inject(metadata, context, setter=_SETTER)
    # baggage_set(context) without its frame: the W3C propagator writes a header only then
    ctx = context if context is not None or _RUNTIME is None else _RUNTIME[0].get()
    if (ctx.get(_BAGGAGE_KEY) if type(ctx) is _Context and _BAGGAGE_KEY is not None
            else baggage_set(ctx)):
        _fit_baggage(metadata)


METADATA_BUDGET = 8192
"""Bytes of a request's metadata meshkit keeps its ``baggage`` header within: grpc core's
default ``grpc.max_metadata_size``, counted as grpc core counts a received header list
(name, value as sent and 32 bytes per field: a ``-bin`` value base64-encoded without
padding, 4 bytes per 3), with :data:`_FIXED_HEADERS` for the fields grpc adds."""
_FIXED_HEADERS = 1024  # :path, :authority, :method, :scheme, te, content-type,
# user-agent, grpc-timeout, grpc-accept-encoding: about 540 bytes for a short method name
_baggage_trimmed: list[Any] = []  # the RepeatLog of trimmed baggage, made when first needed


def _fit_baggage(metadata: MutableSequence[tuple[str, str | bytes]]) -> None:
    """Drop ``baggage`` list-members from the end of the header until ``metadata`` fits
    :data:`METADATA_BUDGET` (see :func:`inject_context`); one loop over the metadata when
    a ``baggage`` header is there, nothing else."""
    at, size = -1, _FIXED_HEADERS
    for i, (k, v) in enumerate(metadata):
        n = len(v.encode() if isinstance(v, str) and not v.isascii() else v)
        # a -bin value is sent base64-encoded, unpadded, and counted so (grpc core's
        # hpack parser: the value's wire size)
        size += len(k) + 32 + (n // 3 * 4 + (0, 2, 3)[n % 3] if k.endswith("-bin")
                               else n)
        if k == "baggage":
            at = i
    if at < 0 or size <= METADATA_BUDGET:
        return
    value = metadata[at][1]
    text = value if isinstance(value, str) else value.decode("ascii", "replace")
    members = text.split(",")
    over, kept = size - METADATA_BUDGET, len(members)
    while kept and over > 0:
        kept -= 1
        over -= len(members[kept]) + (1 if kept else 0)
    if kept:
        metadata[at] = ("baggage", ",".join(members[:kept]))
    else:
        del metadata[at]
    if not _baggage_trimmed:
        from meshkit._log import RepeatLog

        _baggage_trimmed.append(RepeatLog(
            _log, "baggage cut to fit the request's metadata limit",
            "baggage cuts", key_fields=(), level="warning",
            fields={"limit_bytes": METADATA_BUDGET}))
    _baggage_trimmed[0].report((), members=len(members), members_sent=kept)


def extract_context(metadata: Sequence[Any] | None) -> Any:
    """The OpenTelemetry ``Context`` carried by incoming gRPC ``metadata`` (pairs), or an
    empty one; unreadable headers are ignored, as W3C Trace Context requires.

    The OpenTelemetry API's propagators log a warning on their standard library loggers
    (:data:`PROPAGATION_LOGGERS`) for each malformed ``baggage`` or ``tracestate`` header
    they read, quoting it: once :func:`bound_propagation_warnings` has run (a
    :class:`~meshkit.observability.TelemetryServerInterceptor` runs it when built) these
    are at most one line per message and minute, the caller's text cut to 200
    characters.

    The extraction starts from an empty context whatever the propagators' order (the
    API's baggage propagator, given none, starts from the current one: first in
    ``OTEL_PROPAGATORS`` it handed the current span and baggage on as the caller's)."""
    return propagate.extract(metadata or (), _Context(), getter=_GETTER)


PROPAGATION_LOGGERS = ("opentelemetry.baggage.propagation",
                       "opentelemetry.trace.propagation.tracecontext",
                       "opentelemetry.trace.span")
"""The OpenTelemetry API's standard library loggers that warn once per malformed incoming
header, quoting the caller's text: the W3C baggage propagator (a ``baggage`` list-member
that does not parse, an invalid or non-ASCII entry, too many members or bytes), the
trace context propagator (a ``traceparent``/``tracestate`` over its length limit), and
``TraceState.from_header`` (a ``tracestate`` member that does not parse, a duplicate key,
too many members)."""

_filters: weakref.WeakSet[BoundedLogFilter] = weakref.WeakSet()


class BoundedLogFilter(logging.Filter):
    """A standard library :class:`logging.Filter` that bounds the lines a logger writes
    for events a remote caller can cause at will (one per call): the first record of each
    message template (a record's ``msg`` before its ``%`` arguments, with the logger's
    name) goes through, later ones within ``interval_s`` of it are dropped and counted,
    and the count is told on the template's next record let through after the interval,
    appended to its message: ``" (and 199 more in the last 61 s)"``. A count is only told
    on such a record (there is no timer): the records dropped after a template's last
    line are not told.

    A record let through has its string arguments made safe to log: characters that are
    not printable (line breaks, escapes) written as Python escapes (no forged lines), and
    cut to ``max_arg_chars`` with the argument's length told (``"xxx... (5000 chars)"``).

    The application's handlers and formatters get the records let through as they would
    without the filter. Thread-safe (standard library logging is called from any
    thread; a lock held for a dict lookup and an addition, re-made in a forked child);
    never raises: on an error of its own the record goes through as it is. At most
    ``max_templates`` templates are tracked; the records of further ones share one more
    count.

    This is a filter on the logger (not meshkit's ``RepeatLog``): the records are the
    OpenTelemetry API's, logged from any thread through whatever handlers the
    application set up for the standard library (none: ``logging.lastResort``, standard
    error), and must reach them or nothing, as records.

    Args:
        interval_s: seconds a template's later records are counted, not logged (default
            60; > 0).
        max_arg_chars: characters of a string argument kept (default 200; >= 1).
        max_templates: templates tracked at once (default 64; >= 1).
        clock: monotonic seconds (default ``time.monotonic``).

    Raises:
        ConfigError: ``interval_s`` not a finite number > 0, ``max_arg_chars`` or
            ``max_templates`` not an integer >= 1 (value quoted).
    """

    def __init__(self, *, interval_s: float = 60.0, max_arg_chars: int = 200,
                 max_templates: int = 64, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) \
                or not 0 < interval_s < float("inf"):
            raise ConfigError(f"interval_s must be a finite number of seconds > 0, "
                              f"got {interval_s!r}")
        for name, value in (("max_arg_chars", max_arg_chars),
                            ("max_templates", max_templates)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        super().__init__()
        self.interval_s = float(interval_s)
        self.max_arg_chars = max_arg_chars
        self.max_templates = max_templates
        self._clock = clock
        self._lock = threading.Lock()
        # (logger name, template) -> [time its last line went through, records dropped]
        self._kinds: dict[tuple[str, str], list[float]] = {}
        _filters.add(self)

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written (its arguments made safe, a count appended to its
        message, when it is)."""
        try:
            msg = record.msg
            key = (record.name, msg if isinstance(msg, str) else type(msg).__name__)
            now = self._clock()
            with self._lock:
                kinds = self._kinds
                slot = kinds.get(key)
                if slot is None and len(kinds) >= self.max_templates:
                    key = (record.name, "")  # the shared count of further templates
                    slot = kinds.get(key)
                if slot is None:
                    kinds[key] = [now, 0]
                    dropped, over_s = 0, 0.0
                elif now - slot[0] < self.interval_s:
                    slot[1] += 1
                    return False
                else:
                    dropped, over_s = int(slot[1]), now - slot[0]
                    slot[0], slot[1] = now, 0
            args = record.args
            if isinstance(args, tuple):
                record.args = tuple(self._safe(a) for a in args)
            elif isinstance(args, Mapping):  # logging's single-mapping form
                record.args = {k: self._safe(v) for k, v in args.items()}
            if dropped:
                # no "%" added: the template is still formatted with its arguments
                record.msg = f"{msg} (and {dropped} more in the last {over_s:.0f} s)"
        except Exception:  # a log filter never fails the code that logged
            return True
        return True

    def _safe(self, value: Any) -> Any:
        """``value``, a string escaped and cut to ``max_arg_chars`` (length told)."""
        if not isinstance(value, str):
            return value
        size = len(value)
        if not value.isprintable():
            value = value.encode("unicode_escape").decode("ascii")
        if len(value) > self.max_arg_chars:
            value = f"{value[:self.max_arg_chars]}... ({size} chars)"
        return value


def _filters_after_fork() -> None:
    """In a forked child: new locks (one held by another thread of the parent at the fork
    would never be released)."""
    for f in list(_filters):
        f._lock = threading.Lock()


os.register_at_fork(after_in_child=_filters_after_fork)
_bound_lock = threading.Lock()


def bound_propagation_warnings() -> None:
    """Add a :class:`BoundedLogFilter` (defaults: the first record of each message per
    60 s, strings cut to 200 characters) to each of :data:`PROPAGATION_LOGGERS` that has
    none, so that a caller sending a malformed ``baggage`` or ``tracestate`` header on
    every call puts one short warning line per minute into the log, not one per call
    quoting up to 8 KB of its text. Idempotent and thread-safe; a process-wide change to
    these loggers (every extraction in the process is bounded, the application's own
    ``propagate.extract`` included). An application that wants every record removes the
    filter: ``logger.removeFilter(f)`` for ``f`` in ``logger.filters``."""
    with _bound_lock:
        for name in PROPAGATION_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, BoundedLogFilter) for f in logger.filters):
                logger.addFilter(BoundedLogFilter())


def sdk_available() -> bool:
    """Whether the OpenTelemetry SDK (``meshkit[otel]``) can be imported."""
    return _sdk is not None


def require_sdk(what: str) -> None:
    """Raise :class:`ConfigError` naming the ``meshkit[otel]`` extra when the OpenTelemetry
    SDK is not installed; ``what`` is the feature that needs it."""
    if _sdk is None:
        raise ConfigError(f"{what} needs the OpenTelemetry SDK, which is not installed: "
                          f"pip install '{OTEL_EXTRA}'")


def _exporter(name: str) -> SpanExporter | None:
    """The exporter ``OTEL_TRACES_EXPORTER``'s ``name`` loads (entry point group
    ``opentelemetry_traces_exporter``; ``otlp`` resolved by :func:`_entry_name`), or
    ``None`` with a warning if not installed (an OTLP one naming its package and the
    variable that asked for it).

    Raises:
        ConfigError: the exporter fails to load or build (an OTLP exporter refusing an
            ``OTEL_EXPORTER_OTLP_*`` value): the variable and exporter named, the error's
            type given.
    """
    entry = _entry_name(name)
    eps = importlib_metadata.entry_points(group="opentelemetry_traces_exporter", name=entry)
    for ep in eps:
        try:
            exporter: SpanExporter = ep.load()()
        except Exception as e:  # its text is the exporter's: not quoted
            raise ConfigError(f"OTEL_TRACES_EXPORTER names the exporter {entry!r}, which "
                              f"failed to load or build ({type(e).__name__}; its "
                              f"OTEL_EXPORTER_* settings?)") from None
        return exporter
    if name.startswith("otlp"):
        asked_by = "OTEL_TRACES_EXPORTER" if os.environ.get(
            "OTEL_TRACES_EXPORTER", "").strip() else next(
            (v for v in _OTLP_ENDPOINT_VARS if os.environ.get(v, "").strip()),
            "OTEL_TRACES_EXPORTER")
        _log.warning("OTLP export asked for but opentelemetry-exporter-otlp is not "
                     "installed; spans are not exported", asked_by=asked_by,
                     exporter=entry, fix="pip install opentelemetry-exporter-otlp")
    else:
        _log.warning("trace exporter not installed; spans are not exported", exporter=name)
    return None


def _otlp_protocol() -> str | None:
    """The OTLP protocol of traces: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (case and surrounding blanks ignored, empty is
    unset); ``None`` when neither says.

    Raises:
        ConfigError: a protocol other than ``grpc`` and ``http/protobuf`` (the variable
            named, the value quoted), as the SDK's configurator refuses it.
    """
    for var in _OTLP_PROTOCOL_VARS:
        raw = os.environ.get(var, "")
        value = raw.strip().lower()
        if value:
            if value not in _OTLP_BY_PROTOCOL:
                raise ConfigError(f"{var} must be grpc or http/protobuf (the OTLP exporters "
                                  f"for Python), got {raw!r}")
            return value
    return None


def _entry_name(name: str) -> str:
    """The entry point an ``OTEL_TRACES_EXPORTER`` ``name`` loads: ``otlp`` is
    ``otlp_proto_grpc`` or ``otlp_proto_http`` as :func:`_otlp_protocol` says (itself,
    the gRPC exporter of ``opentelemetry-exporter-otlp``, when unset), as the SDK's
    configurator maps it; any other name (``otlp_proto_http`` named outright included)
    is itself."""
    if name != "otlp":
        return name
    protocol = _otlp_protocol()
    return name if protocol is None else _OTLP_BY_PROTOCOL[protocol]


class _TracingEnv(NamedTuple):
    """The ``OTEL_*`` tracing settings, read and checked (:func:`_tracing_env`)."""

    sampler: str
    """``OTEL_TRACES_SAMPLER`` normalised (one of ``_SAMPLERS``), or the name of an
    installed ``opentelemetry_traces_sampler`` entry point."""
    ratio: float
    """``OTEL_TRACES_SAMPLER_ARG`` for the ratio samplers, 0..1 (1.0 when unset)."""
    exporters: tuple[str, ...] | None
    """``OTEL_TRACES_EXPORTER``'s names, normalised; ``None`` when unset."""
    arg: str | None = None
    """``OTEL_TRACES_SAMPLER_ARG`` as written, for an installed sampler's factory
    (``None`` when unset or empty)."""


_SAMPLER_GROUP = "opentelemetry_traces_sampler"
"""The entry point group of samplers the SDK's configurator loads by name."""


def _installed_sampler(raw: str) -> str | None:
    """The name of the installed ``opentelemetry_traces_sampler`` entry point
    ``OTEL_TRACES_SAMPLER``'s ``raw`` value names (as written, blanks stripped, else
    lower-cased), or ``None``."""
    for name in dict.fromkeys((raw.strip(), raw.strip().lower())):
        if name and importlib_metadata.entry_points(group=_SAMPLER_GROUP, name=name):
            return name
    return None


_ID_GENERATOR_GROUP = "opentelemetry_id_generator"
"""The entry point group of id generators the SDK's configurator loads by name."""


def _id_generator_name() -> str | None:
    """The installed ``opentelemetry_id_generator`` entry point ``OTEL_PYTHON_ID_GENERATOR``
    names (as written, blanks stripped, else lower-cased), or ``None`` when unset, empty
    or ``random`` (the SDK's default generator).

    Raises:
        ConfigError: no installed entry point has that name (the variable named, the
            value quoted).
    """
    raw = os.environ.get("OTEL_PYTHON_ID_GENERATOR", "")
    if not raw.strip() or raw.strip().lower() == "random":
        return None
    for name in dict.fromkeys((raw.strip(), raw.strip().lower())):
        if importlib_metadata.entry_points(group=_ID_GENERATOR_GROUP, name=name):
            return name
    raise ConfigError(f"OTEL_PYTHON_ID_GENERATOR must name an installed "
                      f"{_ID_GENERATOR_GROUP} entry point (random by default), "
                      f"got {raw!r}")


def _id_generator() -> Any:
    """The id generator ``OTEL_PYTHON_ID_GENERATOR`` names, built as the SDK's configurator
    builds it (its entry point's class, called without arguments); ``None`` for the
    SDK's default.

    Raises:
        ConfigError: as :func:`_id_generator_name`; an entry point that fails to load or
            build, or is no ``IdGenerator`` (the name quoted, the error's type named).
    """
    name = _id_generator_name()
    if name is None:
        return None
    try:
        made = next(iter(importlib_metadata.entry_points(
            group=_ID_GENERATOR_GROUP, name=name))).load()()
    except Exception as e:  # its text is the generator's: not quoted
        raise ConfigError(f"OTEL_PYTHON_ID_GENERATOR names the id generator {name!r}, which "
                          f"failed to load or build ({type(e).__name__})") from None
    if not isinstance(made, _sdk.id_generator.IdGenerator):
        raise ConfigError(f"OTEL_PYTHON_ID_GENERATOR names {name!r}, which made no "
                          f"IdGenerator ({type(made).__name__})")
    return made


def _tracing_env(exporters_from_env: bool = True) -> _TracingEnv:
    """Read and check the ``OTEL_*`` tracing variables as :func:`configure_tracing` uses
    them (no I/O but an entry point look-up for an exporter name meshkit does not know,
    or an ``OTEL_PYTHON_ID_GENERATOR`` other than ``random``); ``exporters_from_env``
    ``False`` (exporters given in code): the exporter variables are neither read nor
    checked (``exporters`` ``None``).

    Raises:
        ConfigError: an unknown sampler, a sampler argument that is not a ratio in
            [0, 1], an unknown exporter name, an ``OTEL_PYTHON_ID_GENERATOR`` no installed
            entry point has, or (an OTLP exporter to run: ``otlp`` named,
            or the exporter unset with an OTLP endpoint set or the package installed) an
            OTLP protocol no Python exporter speaks; the variable named and its value
            quoted.
    """
    # An empty variable is an unset one (OTel spec, "Configuration: Environment Variable
    # Specification"). The sampler is built here from the normalised name, not left to
    # the SDK, which reads the raw value and would take "traceidratio " for unknown and
    # fall back to parentbased_always_on: every trace sampled.
    env = os.environ
    _id_generator_name()
    raw_sampler = env.get("OTEL_TRACES_SAMPLER", "")
    sampler = raw_sampler.strip().lower() or "parentbased_always_on"
    if sampler not in _SAMPLERS:
        # a sampler installed as an entry point: the SDK's configurator
        # (opentelemetry-instrument) loads it by name, so a process it runs runs here
        installed = _installed_sampler(raw_sampler)
        if installed is None:
            raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {sorted(_SAMPLERS)} "
                              f"or an installed {_SAMPLER_GROUP} entry point, "
                              f"got {raw_sampler!r}")
        arg_raw = env.get("OTEL_TRACES_SAMPLER_ARG", "")
        _batch_settings(env)  # as for a built-in sampler (below)
        return _TracingEnv(installed, 1.0, _exporter_names(env) if exporters_from_env
                           else None, arg_raw or None)
    ratio = 1.0  # the SDK's default argument
    if sampler.endswith("traceidratio"):
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "")
        if arg.strip():
            try:
                ratio = float(arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise ConfigError(
                    f"OTEL_TRACES_SAMPLER_ARG must be a ratio 0..1, got {arg!r}")
    _batch_settings(env)  # checked here too, so that dial() refuses them like serve()
    return _TracingEnv(sampler, ratio, _exporter_names(env) if exporters_from_env
                       else None)


# (variable, smallest value, the SDK's default) of the batch span processor's settings,
# each at most _BSP_MOST (a Java int, as other SDKs read them; 24.8 days of ms): the SDK
# takes any int, but a queue size past sys.maxsize fails to build (OverflowError) and a
# delay past threading.TIMEOUT_MAX kills its export thread at its first wait (spans then
# never exported, nothing said)
_BSP_MOST = 2**31 - 1
_BSP_VARS = (("OTEL_BSP_MAX_QUEUE_SIZE", 1, 2048), ("OTEL_BSP_SCHEDULE_DELAY", 1, 5000),
             ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1, 512),
             ("OTEL_BSP_EXPORT_TIMEOUT", 0, 30000))
_BSP_ARGS = ("max_queue_size", "schedule_delay_millis", "max_export_batch_size",
             "export_timeout_millis")
# the span limits the SDK's TracerProvider reads (SpanLimits): integers >= 0; empty is
# the SDK's "no limit"
_LIMIT_VARS = ("OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
               "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
               "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT",
               "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT")


def _int_var(env: Mapping[str, str], var: str, least: int,
             most: int | None = None) -> int | None:
    """``var`` as an integer >= ``least`` (and <= ``most``; blanks around it ignored),
    ``None`` when unset or empty.

    Raises:
        ConfigError: not such an integer (the variable named, the value quoted).
    """
    raw = env.get(var, "")
    if not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = least - 1
    if value < least or (most is not None and value > most):
        where = f">= {least}" if most is None else f"in [{least}, {most}]"
        raise ConfigError(f"{var} must be an integer {where}, got {raw!r}")
    return value


def _batch_settings(env: Mapping[str, str]) -> dict[str, int]:
    """The ``BatchSpanProcessor`` arguments ``OTEL_BSP_*`` give (the SDK's defaults for
    the ones unset or empty), given to it explicitly: the SDK raises a bare
    ``ValueError`` naming no variable for a size or delay it refuses, and for a
    ``OTEL_BSP_MAX_QUEUE_SIZE`` under its default batch of 512 (valid on its own, which
    here takes the batch down to it); also checks the span limit variables the SDK's
    ``TracerProvider`` would raise for.

    Raises:
        ConfigError: a value that is not an integer in range (an ``OTEL_BSP_*`` one at
            most 2147483647), or an ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` over
            ``OTEL_BSP_MAX_QUEUE_SIZE`` (the variables named, the values quoted).
    """
    for var in _LIMIT_VARS:
        _int_var(env, var, 0)
    settings: dict[str, int] = {}
    batch_given = False
    for (var, least, default), arg in zip(_BSP_VARS, _BSP_ARGS, strict=True):
        value = _int_var(env, var, least, _BSP_MOST)
        settings[arg] = default if value is None else value
        batch_given = batch_given or (arg == "max_export_batch_size" and value is not None)
    if settings["max_export_batch_size"] > settings["max_queue_size"]:
        if batch_given:
            raise ConfigError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be at most OTEL_BSP_MAX_QUEUE_SIZE, "
                f"got {env.get('OTEL_BSP_MAX_EXPORT_BATCH_SIZE')!r} over "
                f"{env.get('OTEL_BSP_MAX_QUEUE_SIZE', '2048')!r}")
        settings["max_export_batch_size"] = settings["max_queue_size"]
    return settings


def _exporter_names(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """``OTEL_TRACES_EXPORTER``'s names, normalised (``None`` when unset or naming
    nothing, as ``","``), checked with the OTLP protocol (see :func:`_tracing_env`)."""
    raw = env.get("OTEL_TRACES_EXPORTER", "")
    # no name at all (",": a template's empty values) is unset, as tracing_wanted reads it
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip()) or None
    for name in names or ():
        if name not in _EXPORTERS and not importlib_metadata.entry_points(
                group="opentelemetry_traces_exporter", name=name):
            raise ConfigError(f"OTEL_TRACES_EXPORTER names an unknown exporter {name!r}")
    # the protocol matters only to an OTLP exporter that will run: named, or (unset) the
    # default once an endpoint is set or the package is installed; a value for another
    # SDK (http/json, the JavaScript SDK's default) is no reason to refuse a process that
    # traces elsewhere
    if (names is not None and "otlp" in names) or (names is None and (
            any(env.get(v, "").strip() for v in _OTLP_ENDPOINT_VARS) or any(
                importlib_metadata.entry_points(group="opentelemetry_traces_exporter",
                                                name=n) for n in _OTLP_ENTRY_NAMES))):
        _otlp_protocol()
    return names


def configure_tracing(
    service_name: str | None,
    *,
    exporters: Iterable[SpanExporter] | None = None,
    set_global: bool = True,
) -> TracerProvider:
    """Build the SDK :class:`~opentelemetry.sdk.trace.TracerProvider` of a service from the
    standard environment, and (by default) install it as the global one.

    Read from the environment (the SDK's own handling where it has one):

    * ``OTEL_SERVICE_NAME`` (overrides ``service_name``), ``OTEL_RESOURCE_ATTRIBUTES``
      (its ``service.name`` names a process that names no service itself);
    * ``OTEL_TRACES_SAMPLER`` (``parentbased_always_on`` by default; ``always_on``,
      ``always_off``, ``traceidratio``, ``parentbased_always_off``,
      ``parentbased_traceidratio``; case and surrounding blanks ignored; or, as the SDK's
      configurator takes it, the name of an installed ``opentelemetry_traces_sampler``
      entry point, whose factory gets ``OTEL_TRACES_SAMPLER_ARG`` as written) and
      ``OTEL_TRACES_SAMPLER_ARG`` (ratio 0..1, default 1.0);
    * ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none`` (or any
      installed ``opentelemetry_traces_exporter`` entry point), each exporter set up
      once however often it is named (``otlp`` beside the exporter it means included),
      as the SDK's configurator does. Unset (or empty, as
      every variable here, per the OTel spec) means ``otlp`` when
      ``opentelemetry-exporter-otlp`` is installed or an ``OTEL_EXPORTER_OTLP_ENDPOINT``
      (or ``..._TRACES_ENDPOINT``) is set, else none. ``otlp`` is the exporter of the
      protocol ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (else
      ``OTEL_EXPORTER_OTLP_PROTOCOL``) names: ``grpc`` (the default) or ``http/protobuf``
      (``otlp_proto_http``), as the SDK's configurator maps it; ``otlp_proto_grpc`` or
      ``otlp_proto_http`` named outright win over the protocol. OTLP asked for without
      the package logs a warning naming it and exports nothing. The endpoint, headers
      and the rest come from ``OTEL_EXPORTER_OTLP_*`` as the exporter reads them.
    * ``OTEL_PYTHON_ID_GENERATOR``: the installed ``opentelemetry_id_generator`` entry
      point that makes trace and span ids (``random``, the SDK's, by default; e.g.
      ``xray``), as the SDK's configurator takes it;
    * ``OTEL_BSP_*`` for the batch span processor (an ``OTEL_BSP_MAX_QUEUE_SIZE`` under
      the default batch of 512 takes the batch down to it) and the ``OTEL_*_LIMIT`` span
      limits, integers as the SDK reads them;
    * ``MESHKIT_TRACE_FILE``: also append every span to this JSON-lines file
      (:class:`~meshkit.observability.JsonLinesSpanExporter`).

    Under ``OTEL_SDK_DISABLED=true`` the SDK's provider built here is its disabled one
    (no spans; meshkit propagates trace context as without an SDK) with no exporter,
    processor or trace file set up (``exporters`` given are left alone), and
    :func:`tracing_from_env` does not call this at all.

    Args:
        service_name: ``service.name`` of the resource, e.g. ``"orderd"``; ``None`` (or
            :data:`UNKNOWN_SERVICE`, the OpenTelemetry placeholder) for a process that
            names no service: ``OTEL_SERVICE_NAME``, else ``OTEL_RESOURCE_ATTRIBUTES``'
            ``service.name``, else the SDK's ``unknown_service:<executable>`` (the
            OpenTelemetry resource SDK specification's order).
        exporters: use these exporters (each behind a batch processor; one given alone
            is that one) instead of ``OTEL_TRACES_EXPORTER`` (which, with the OTLP
            protocol and endpoint variables, is then neither read nor checked); tests
            pass an in-memory one behind their own ``SimpleSpanProcessor`` by calling
            ``provider.add_span_processor`` instead.
        set_global: install it with ``trace.set_tracer_provider`` (default ``True``; the
            global provider can be set once per process).

    Returns:
        The provider; call ``provider.shutdown()`` at exit to flush spans.

    Raises:
        ConfigError: empty ``service_name``, a ``set_global`` that is not ``True`` or
            ``False``, ``exporters`` holding something that is not
            a span exporter instance (a name, ``None``, an exporter class: quoted),
            unknown sampler (or an installed one that
            fails to build), a sampler argument that is not a ratio in [0, 1], an
            ``OTEL_BSP_*`` or span limit value that is not an integer in range (or a batch
            over the queue), an unknown exporter name, an OTLP protocol other
            than ``grpc`` and ``http/protobuf`` when OTLP is asked for, an
            ``OTEL_TRACES_EXPORTER`` exporter that fails to load or build, or a
            ``MESHKIT_TRACE_FILE`` that cannot be opened (before any exporter is set up),
            or an ``OTEL_PYTHON_ID_GENERATOR`` not installed or that builds no id
            generator (the variable named, the value quoted).
    """
    _check_service_name(service_name)
    check_bool("set_global", set_global)
    if exporters is not None:
        exporters = _checked_exporters(exporters)
    require_sdk("configure_tracing")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    settings = _tracing_env(exporters is None)  # exporters given: no OTEL_*EXPORTER*
    sampler = _sampler(settings.sampler, settings.ratio, settings.arg)
    ids = _id_generator()
    # the SDK's disabled provider (it reads the variable as sdk_disabled does) makes no
    # spans: no exporter, processor thread or file for it
    disabled = sdk_disabled()
    # before any exporter: a path that cannot be opened fails with no processor's thread
    # left running
    file_exporter = None if disabled else _trace_file_exporter()
    try:
        provider = TracerProvider(resource=_resource(service_name), sampler=sampler,
                                  id_generator=ids)
        if disabled:
            exporters = ()
        elif exporters is None:
            exporters = _env_exporters(settings)
    except BaseException:  # the file was opened for this provider only
        if file_exporter is not None:
            file_exporter.shutdown()
        raise
    batch = _batch_settings(os.environ)
    for exp in exporters:
        provider.add_span_processor(BatchSpanProcessor(
            exp, max_queue_size=batch["max_queue_size"],
            schedule_delay_millis=batch["schedule_delay_millis"],
            max_export_batch_size=batch["max_export_batch_size"],
            export_timeout_millis=batch["export_timeout_millis"]))
    if file_exporter is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(file_exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _env_exporters(settings: _TracingEnv) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (see :func:`configure_tracing`), each
    entry point once; the ones built before one that fails are shut down.

    Raises:
        ConfigError: as :func:`_exporter`.
    """
    names = settings.exporters
    if names is None:  # unset: OTLP when installed, or when an endpoint asks for it
        names = ("otlp",) if any(os.environ.get(v, "").strip()
                                 for v in _OTLP_ENDPOINT_VARS) or _has_otlp() else ()
    chosen: list[SpanExporter] = []
    loaded: set[str] = set()  # one exporter per entry point, as the SDK keys them
    try:
        for name in names:
            entry = _entry_name(name)  # "otlp" left as it is: the gRPC one, as the SDK's
            key = _OTLP_BY_PROTOCOL["grpc"] if entry == "otlp" else entry
            if name == "none" or key in loaded:
                continue
            loaded.add(key)
            exp = _exporter(name)
            if exp is not None:
                chosen.append(exp)
    except BaseException:
        for exp in chosen:
            exp.shutdown()
        raise
    return chosen


def _trace_file_exporter() -> SpanExporter | None:
    """The :class:`~meshkit.observability.JsonLinesSpanExporter` of ``MESHKIT_TRACE_FILE``
    (surrounding blanks ignored), its file opened; ``None`` when the variable is unset or
    empty.

    Raises:
        ConfigError: the file (or its directory) cannot be made or opened (the variable
            named, the path quoted, the system's reason given).
    """
    trace_file = os.environ.get("MESHKIT_TRACE_FILE", "").strip()
    if not trace_file:
        return None
    from meshkit.observability._files import JsonLinesSpanExporter

    try:
        return JsonLinesSpanExporter(trace_file)
    except OSError as e:
        raise ConfigError(f"MESHKIT_TRACE_FILE {trace_file!r} cannot be opened to append "
                          f"spans to: {e}") from None


def _is_exporter(value: object) -> bool:
    """Whether ``value`` is a span exporter instance: what a batch processor calls
    (``export``, ``shutdown``) is there, and it is not a class."""
    return not isinstance(value, type) and all(
        callable(getattr(value, m, None)) for m in ("export", "shutdown"))


def _checked_exporters(exporters: object) -> list[SpanExporter]:
    """``configure_tracing``'s ``exporters`` as a list: one exporter given alone is that
    one.

    Raises:
        ConfigError: not a span exporter nor a collection of them (the first bad value
            quoted).
    """
    if _is_exporter(exporters):
        return [exporters]  # type: ignore[list-item]
    if isinstance(exporters, (str, bytes)) or not isinstance(exporters, Iterable):
        raise ConfigError(f"exporters must be span exporters (SpanExporter instances), "
                          f"got {exporters!r}")
    chosen = list(exporters)
    for exp in chosen:
        if not _is_exporter(exp):
            raise ConfigError(f"exporters must be span exporters (SpanExporter instances), "
                              f"got {exp!r} among them")
    return chosen


def _check_service_name(service_name: object) -> None:
    """Raise :class:`ConfigError` (the value quoted) unless ``service_name`` is ``None`` or
    a non-empty string."""
    if service_name is not None and (not isinstance(service_name, str) or not service_name):
        raise ConfigError(f"service_name must be a non-empty string, got {service_name!r}")


def _resource(service_name: str | None) -> Resource:
    """The SDK resource of a provider for ``service_name`` (see :func:`configure_tracing`):
    the SDK's detectors (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME`` over it) with
    ``service.name`` set to ``service_name`` unless ``OTEL_SERVICE_NAME`` is set or the
    process names no service (``None``, blank, :data:`UNKNOWN_SERVICE`). A blank
    ``OTEL_SERVICE_NAME`` is unset (as meshkit reads its other variables), not a name."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    named = _names_a_service(service_name)
    env_name = os.environ.get("OTEL_SERVICE_NAME", "")
    attrs = {SERVICE_NAME: service_name} if named and not env_name.strip() else {}
    if env_name and not env_name.strip() and not named:
        # blank: unset, but the SDK's detector would take it as the name; what the name
        # is without it: OTEL_RESOURCE_ATTRIBUTES' service.name, else the SDK's default
        attrs = {SERVICE_NAME: _resource_attributes_name() or (
            f"{UNKNOWN_SERVICE}:{os.path.basename(sys.executable)}" if sys.executable
            else UNKNOWN_SERVICE)}
    return Resource.create(attrs)


def _names_a_service(service_name: str | None) -> bool:
    """Whether ``service_name`` names a service: not ``None``, blank or
    :data:`UNKNOWN_SERVICE`."""
    return service_name is not None and bool(service_name.strip()) \
        and service_name != UNKNOWN_SERVICE


def _resource_attributes_name() -> str | None:
    """``OTEL_RESOURCE_ATTRIBUTES``' ``service.name`` (``key=value`` pairs, comma-separated,
    values percent-decoded, as the SDK's detector reads them), or ``None``."""
    from urllib.parse import unquote

    found = None
    for item in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip() == "service.name":
            found = unquote(value.strip())
    return found or None


def _sampler(name: str, ratio: float, arg: str | None = None) -> Any:
    """The SDK sampler ``name`` (one of ``_SAMPLERS``, normalised) with ``ratio`` for the
    ratio samplers: the SDK's own mapping of ``OTEL_TRACES_SAMPLER`` names; any other
    ``name`` is an installed ``opentelemetry_traces_sampler`` entry point, whose factory
    is called with ``arg`` (the raw ``OTEL_TRACES_SAMPLER_ARG``, as the SDK's configurator
    does).

    Raises:
        ConfigError: an installed sampler that cannot be loaded, whose factory raises or
            returns no SDK ``Sampler`` (the sampler quoted, its error's type named).
    """
    from opentelemetry.sdk.trace import sampling

    if name not in _SAMPLERS:
        try:
            factory = next(iter(importlib_metadata.entry_points(
                group=_SAMPLER_GROUP, name=name))).load()
            made = factory(arg)
        except Exception as e:  # its text is the sampler's: not quoted
            raise ConfigError(f"OTEL_TRACES_SAMPLER names the installed sampler {name!r}, "
                              f"which failed to load or build ({type(e).__name__})"
                              ) from None
        if not isinstance(made, sampling.Sampler):
            raise ConfigError(f"OTEL_TRACES_SAMPLER names the installed sampler {name!r}, "
                              f"whose factory made no Sampler ({type(made).__name__})")
        return made

    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    if name == "parentbased_always_off":
        return sampling.DEFAULT_OFF
    if name == "parentbased_traceidratio":
        return sampling.ParentBasedTraceIdRatio(ratio)
    return sampling.DEFAULT_ON


def _has_otlp() -> bool:
    """Whether the exporter ``otlp`` means (:func:`_entry_name`) is installed."""
    return bool(importlib_metadata.entry_points(group="opentelemetry_traces_exporter",
                                                name=_entry_name("otlp")))


def _otel_grpc() -> Any:
    """``opentelemetry.instrumentation.grpc``, or :class:`ConfigError` naming its extra."""
    try:
        import opentelemetry.instrumentation.grpc as otel_grpc
    except ImportError:
        raise ConfigError("implementation='otel' needs opentelemetry-instrumentation-grpc: "
                          "pip install 'meshkit[otel-grpc]'") from None
    return otel_grpc


def _unquiet_filter(quiet_methods: Iterable[str]) -> Callable[[Any], bool] | None:
    """opentelemetry-instrumentation-grpc's ``filter_`` (``True``: trace the call) that
    leaves out the methods ``quiet_methods`` patterns match (:mod:`meshkit._methods`), or
    ``None`` (trace every call) when there are none.

    Raises:
        ConfigError: a bad pattern (quoted), as ``TelemetryOptions.quiet_methods``.
    """
    from meshkit._methods import MethodMatcher

    quiet = MethodMatcher.of(quiet_methods, where="quiet_methods")  # one string refused
    if not quiet.patterns:
        return None

    def traced(details: Any) -> bool:
        method = getattr(details, "method", "")
        if isinstance(method, bytes):  # grpc.aio's ClientCallDetails (grpc issue 31092)
            method = method.decode("ascii", "replace")
        return not quiet.lookup(method)

    return traced


def otel_server_interceptor(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    quiet_methods: Iterable[str] = (),
) -> grpc.aio.ServerInterceptor:
    """The opentelemetry-instrumentation-grpc aio server interceptor (tracing only).

    The reference implementation, for comparison with meshkit's fused
    :class:`~meshkit.observability.TelemetryServerInterceptor`: on loopback its spans
    added about 1.6x the per-call time of the lean pair (``python -m
    tests.observability.timing``). Its attributes follow semconv 1.11 (``net.peer.*``).

    Args:
        tracer_provider: default the global provider.
        quiet_methods: method patterns that get no span (``TelemetryOptions
            .quiet_methods``, which :func:`~meshkit.observability.server_interceptors`
            passes); default none: every call.

    Like a :class:`~meshkit.observability.TelemetryServerInterceptor` it runs
    :func:`bound_propagation_warnings` (a malformed incoming header: one warning per
    message and minute).

    Raises:
        ConfigError: a bad ``quiet_methods`` pattern; the instrumentation not installed.
    """
    traced = _unquiet_filter(quiet_methods)
    icpt: grpc.aio.ServerInterceptor = _otel_grpc().aio_server_interceptor(
        tracer_provider=tracer_provider, filter_=traced)
    bound_propagation_warnings()  # it extracts each call's headers as meshkit's server
    return icpt


def otel_client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    quiet_methods: Iterable[str] = (),
) -> tuple[grpc.aio.ClientInterceptor, ...]:
    """The opentelemetry-instrumentation-grpc aio client interceptors (one per call kind),
    for ``DialOptions.attempt_interceptors``: one client span per *attempt*, since they
    run on each endpoint's sub-channel. The reference to compare the lean ones with.

    Args:
        tracer_provider: default the global provider.
        quiet_methods: method patterns that get no span (``TelemetryOptions
            .quiet_methods``, which :func:`~meshkit.observability.attempt_interceptors`
            passes); default none: every call.

    Raises:
        ConfigError: a bad ``quiet_methods`` pattern; the instrumentation not installed.
    """
    traced = _unquiet_filter(quiet_methods)
    return tuple(_otel_grpc().aio_client_interceptors(tracer_provider=tracer_provider,
                                                      filter_=traced))


def tracing_from_env(service_name: str | None = None) -> TracerProvider | None:
    """Configure tracing (:func:`configure_tracing`) only when the environment asks for it
    and no provider is installed yet (an SDK one, or the application's own of another
    implementation of the API, ``NoOpTracerProvider`` included: the API keeps the first
    one for good); ``serve()`` calls this with its service's name,
    a client channel (a process may only dial) without one at its first call.

    Asking means: ``OTEL_TRACES_EXPORTER`` naming something other than ``none``,
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) set while
    ``OTEL_TRACES_EXPORTER`` is unset (an explicit ``none`` wins over it), or
    ``MESHKIT_TRACE_FILE`` set, and ``OTEL_SDK_DISABLED`` not ``true`` (case and
    surrounding blanks ignored: OpenTelemetry's switch for a no-op SDK, which overrides
    the others; then no SDK is needed either). Otherwise the global no-op provider stays
    and meshkit's span code costs almost nothing.

    Thread-safe: calls from several threads at once set one provider up (the others
    return ``None``, as once one is installed).

    The order of a process's first call and its ``serve()`` does not change its service
    name: a provider set up here without a name (``service_name`` ``None`` or
    :data:`UNKNOWN_SERVICE`, ``OTEL_SERVICE_NAME`` unset) is named by the first later
    call with a name, as it would have been had that call come first (its resource's
    ``service.name`` replaced in place, so the tracers and spans already made say it too;
    every other attribute kept).

    Args:
        service_name: the service the process serves (e.g. ``"orderd"``); ``None``
            (default) for none, see :func:`configure_tracing`.

    Returns:
        The new provider, or ``None`` when nothing was configured.

    Raises:
        ConfigError: as :func:`configure_tracing` (an empty or non-string
            ``service_name`` too, also when a provider is installed already: it names
            nothing); the environment asks for tracing but the OpenTelemetry SDK is not
            installed (names the ``meshkit[otel]`` extra).
    """
    _check_service_name(service_name)
    named = _names_a_service(service_name)
    with _from_env_lock[0]:  # one thread's check and set-up at a time: one provider
        installed = _installed_provider()
        if _sdk is not None and isinstance(installed, _sdk.TracerProvider):
            if named and _unnamed and _unnamed[0] is installed:
                _unnamed.clear()
                _name_provider(installed, str(service_name))
            return None
        if not isinstance(installed, trace.ProxyTracerProvider):
            return None  # the application's own (set once, for good): nothing to set up
        if not tracing_wanted():
            return None
        provider = configure_tracing(service_name)
        if not named and not os.environ.get("OTEL_SERVICE_NAME", "").strip():
            _unnamed[:] = [provider]
        return provider


# the provider tracing_from_env installed for a process that had named no service yet
_unnamed: list[TracerProvider] = []
# held while tracing_from_env checks for a provider and sets one up (two threads' first
# calls built two, the second never installed); a new one in a forked child (one a
# thread of the parent held at the fork would never be released there)
_from_env_lock = [threading.Lock()]
os.register_at_fork(after_in_child=lambda: _from_env_lock.__setitem__(0, threading.Lock()))


def _name_provider(provider: TracerProvider, service_name: str) -> None:
    """Set ``service.name`` of ``provider``'s resource to ``service_name``, keeping its
    other attributes (``service.instance.id`` included). The resource object itself is
    updated: the provider's tracers and their spans (meshkit's lean span classes too)
    hold that object, and an exporter reads its attributes when it exports."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = provider.resource
    renamed = resource.merge(Resource({SERVICE_NAME: service_name}))
    if type(resource) is Resource and hasattr(resource, "_attributes"):
        resource._attributes = renamed._attributes
    else:  # pragma: no cover - another SDK layout: tracers made from now on
        provider._resource = renamed


def sdk_disabled() -> bool:
    """Whether ``OTEL_SDK_DISABLED`` is ``true`` (case and surrounding blanks ignored, as
    the SDK reads it; unset or anything else: ``False``): OpenTelemetry's "a no-op SDK
    implementation will be used for all telemetry signals". A value other than ``true``,
    ``false`` and empty is read as false with a warning quoting it (the specification's
    boolean rule), once per value."""
    raw = os.environ.get("OTEL_SDK_DISABLED", "")
    value = raw.strip().lower()
    if value in ("true", "false", ""):
        return value == "true"
    if raw not in _warned_disabled:
        if len(_warned_disabled) < 16:
            _warned_disabled.add(raw)
        _log.warning("OTEL_SDK_DISABLED is neither true nor false: read as false",
                     variable="OTEL_SDK_DISABLED", value=raw)
    return False


_warned_disabled: set[str] = set()  # the OTEL_SDK_DISABLED values warned about


def tracing_wanted() -> bool:
    """Whether the environment asks for tracing (see :func:`tracing_from_env`); never
    under ``OTEL_SDK_DISABLED=true`` (:func:`sdk_disabled`).

    When it does and no provider is installed yet (so :func:`tracing_from_env` would
    set one up from it), the ``OTEL_*`` settings are checked as :func:`configure_tracing`
    checks them: a client channel calls this when it is built, so a bad value fails
    ``dial()`` as it fails ``serve()``, not (logged, tracing off) at the first call.

    Raises:
        ConfigError: ``OTEL_PYTHON_TRACER_PROVIDER`` names no provider the API can load
            (see :func:`_installed_provider`); while no provider is installed, the
            environment asks for tracing and the SDK is missing (names the
            ``meshkit[otel]`` extra), or an ``OTEL_*`` value :func:`configure_tracing`
            refuses (the variable named, the value quoted).
    """
    env = os.environ
    _installed_provider()  # OTEL_PYTHON_TRACER_PROVIDER: a bad one fails dial(), once
    if sdk_disabled():
        return False
    exporters = {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")
                 if n.strip()}
    # an OTLP endpoint (shared by every signal) asks only while the exporter is unset: an
    # explicit "none" turns trace export off whatever endpoint the metrics or logs use
    wanted = (bool(exporters - {"none"})
              or (not exporters and any(env.get(v, "").strip() for v in _OTLP_ENDPOINT_VARS))
              or bool(env.get("MESHKIT_TRACE_FILE", "").strip()))
    # checked only while no provider is installed (tracing_from_env sets nothing up
    # beside one: an SDK one, or the application's own of another implementation)
    if wanted and isinstance(_installed_provider(), trace.ProxyTracerProvider):
        require_sdk("tracing asked for by OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_*"
                    " / MESHKIT_TRACE_FILE")
        _tracing_env()
    return wanted


# -- lean spans -------------------------------------------------------------------------

_getrandbits = random.getrandbits
_time_ns = time.time_ns  # (a lean span's start and end times)
_new_lock = threading.Lock
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))  # W3C Trace Context level 2
_FLAGS = tuple(TraceFlags(i) for i in range(4))
_KEPT_FLAGS = _SAMPLED | _RANDOM  # the trace flags sent on; the others are reserved (W3C)
_TRACE_ID_LIMIT = (1 << 64) - 1  # a trace id's low 64 bits (the ratio rule); the largest span id
_TRACE_ID_MAX = (1 << 128) - 1  # and the largest valid trace id (W3C Trace Context)
_UNSET_STATUS = Status(StatusCode.UNSET)
_sdk_log = logging.getLogger("opentelemetry.sdk.trace")


def _new_trace_id() -> int:
    """A random non-zero 128-bit trace id (what the SDK's ``RandomIdGenerator`` does)."""
    tid = _getrandbits(128)
    while not tid:  # pragma: no cover - 2**-128
        tid = _getrandbits(128)
    return tid


def _new_span_id() -> int:
    sid = _getrandbits(64)
    while not sid:  # pragma: no cover - 2**-64
        sid = _getrandbits(64)
    return sid


class _PresetTraceIds:
    """The id generator of meshkit's own SDK tracer: hands out the trace id meshkit drew
    (and sampled on) for a root span, so the SDK's span carries the same id; anything
    else is the provider's own generator."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._local = threading.local()

    def preset(self, trace_id: int) -> None:
        self._local.trace_id = trace_id

    def generate_trace_id(self) -> int:
        tid: int | None = getattr(self._local, "trace_id", None)
        if tid is None:
            return int(self._inner.generate_trace_id())
        self._local.trace_id = None
        return tid

    def generate_span_id(self) -> int:
        return int(self._inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        return bool(getattr(self._inner, "is_trace_id_random", lambda: True)())


class _ReplaySampler:
    """The sampler of meshkit's own SDK tracer where the SDK's ``start_span`` builds
    meshkit's spans (span limits that could cut its attributes, an SDK of another shape):
    a span whose sampling decision meshkit already asked the provider's sampler for
    (:meth:`start_span`) gets that answer again instead of a second question; any other
    question (a span decided without asking, e.g. by the parent's flag, or a user's span
    on the same tracer) goes to the provider's sampler. The answer is kept per thread
    for the one ``start_span`` call, so concurrent threads do not see each other's.

    A second question is not harmless: a stateful sampler (rate-limiting, reservoir, or
    random without the trace id) is consumed twice per span and its second answer wins
    (50 % random sampling became 25 %)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._local = threading.local()

    def start_span(self, result: Any, tracer: Any, name: str, context: Any,
                   kind: SpanKind, attributes: dict[str, Any]) -> Span:
        """``tracer.start_span(name, context, kind, attributes)``, its sampler answering
        with ``result`` (the provider's sampler's ``SamplingResult`` for this span)."""
        local = self._local
        local.result = result
        try:
            span: Span = tracer.start_span(name, context, kind, attributes)
        finally:  # a disabled tracer asks nothing: the answer is not left for another span
            local.result = None
        return span

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self._local, "result", None)
        if result is None:
            return self.inner.should_sample(*args, **kwargs)
        self._local.result = None
        return result

    def get_description(self) -> str:
        return str(self.inner.get_description())


def _is_default_parent_based(sampler: Any) -> bool:
    """``ParentBased(root)`` with the default parent delegates (follow the parent's flag),
    the SDK's ``ParentBasedTraceIdRatio`` included; a subclass with a ``should_sample``
    of its own is not (it may decide otherwise: it is asked)."""
    parent_based = _sdk.sampling.ParentBased if _sdk is not None else None
    if parent_based is None or not isinstance(sampler, parent_based) or \
            type(sampler).should_sample is not parent_based.should_sample:
        return False
    on, off = _sdk.sampling.ALWAYS_ON, _sdk.sampling.ALWAYS_OFF
    return (getattr(sampler, "_remote_parent_sampled", None) is on
            and getattr(sampler, "_local_parent_sampled", None) is on
            and getattr(sampler, "_remote_parent_not_sampled", None) is off
            and getattr(sampler, "_local_parent_not_sampled", None) is off)


_LEAN_MIN_ATTRIBUTES = 32
"""The fast SDK span path runs only when span limits cannot cut meshkit's own attributes:
at least this many attributes per span and no value-length limit (else the SDK's path)."""

_lean_types: list[Any] = []


def _is_noop(method: Any) -> bool:
    """Whether a span processor's method does nothing (its body is ``pass`` or only a
    docstring, as ``BatchSpanProcessor.on_start`` and the base ``SpanProcessor``'s): a
    lean span does not call it. Read from the bytecode once per processor set."""
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    if code is None:
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(code)
           if i.opname not in ("RESUME", "NOP", "CACHE")]
    return ops in ([("LOAD_CONST", None), ("RETURN_VALUE", None)],
                   [("RETURN_CONST", None)])


def _plain_non_recording() -> type[NonRecordingSpan] | None:
    """:data:`PLAIN_NON_RECORDING`: the API's ``NonRecordingSpan`` when its
    ``get_span_context()`` returns its ``_context`` and its ``end()`` does nothing."""
    code = getattr(NonRecordingSpan.get_span_context, "__code__", None)
    plain = code is not None and code.co_names == ("_context",) and \
        _is_noop(NonRecordingSpan.end)
    return NonRecordingSpan if plain else None


PLAIN_NON_RECORDING = _plain_non_recording()
"""The type of the spans :class:`SpanStarter` makes for a trace it does not record (an
unsampled one, or without an SDK), ``opentelemetry.trace.NonRecordingSpan``, when reading
it directly is what its methods do (its context in ``_context``, ``end()`` a no-op);
else ``None``. The interceptors' completions test ``type(span) is PLAIN_NON_RECORDING``
to skip such a span's ``is_recording()``, ``end()`` and ``get_span_context()`` frames."""


def _readable_fields() -> frozenset[str] | None:
    """The fields of the installed SDK's ``ReadableSpan`` when they are the 13 a lean
    span copies into one (else ``None``: the SDK's own ``_readable_span`` builds it)."""
    from opentelemetry.sdk.resources import Resource

    probe = _sdk.ReadableSpan("probe", resource=Resource.get_empty())
    fields = frozenset(vars(probe))
    return fields if fields == _READABLE else None


_READABLE = frozenset({"_name", "_context", "_kind", "_instrumentation_info",
                       "_instrumentation_scope", "_parent", "_start_time", "_end_time",
                       "_attributes", "_events", "_links", "_resource", "_status"})


def _lean_span_type() -> Any:
    """The SDK span class of meshkit's sampled RPC spans (built once, when the SDK is
    installed): a subclass of ``opentelemetry.sdk.trace.Span`` — processors, exporters
    and user code see an SDK span — constructed without the generic path's per-span work.
    Each provider gets its own subclass (:meth:`_Sdk.__init__`) holding what every span of
    that provider shares (resource, scope, limits, processors) as class attributes, so a
    span sets only its own seven fields.

    Its attributes start as meshkit's own (already valid) dict and become the SDK's
    ``BoundedAttributes``, with the provider's limits, at the first attribute a user
    writes; events and links are the SDK's bounded lists from the first one added. It
    ends as the SDK's span does (end time, processors' ``_on_ending`` and ``on_end`` with a
    ``ReadableSpan``), calling each processor of the provider's synchronous multi-processor
    directly, skipping the ones whose hook does nothing (:func:`_is_noop`), and handing a
    sampled span straight to a ``BatchSpanProcessor``'s batch (:func:`_batch_emit`)."""
    if _lean_types:
        return _lean_types[0]
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.util import BoundedList

    base = _sdk.Span
    readable = _sdk.ReadableSpan
    fast_readable = _readable_fields() is not None
    new = object.__new__

    class LeanReadableSpan(readable):  # type: ignore[misc,valid-type]
        """The ``ReadableSpan`` a lean span hands its processors: the SDK's class, its
        13 fields in slots instead of an instance dict. A span waiting in a batch
        processor's queue (up to 2,048 by default, for seconds) is then two objects for
        the garbage collector instead of three, and about half the memory; everything
        reads it through the SDK's properties, and ``copy`` handles slots. Each provider
        gets its own subclass (:meth:`_Sdk.__init__`, a lean span's ``_readable_type``)
        holding the three fields every span of that provider shares (resource,
        instrumentation info and scope) as class attributes, as the lean span's class
        does: a span copies ten."""

        __slots__ = tuple(sorted(_READABLE))

    class LeanSdkSpan(base):  # type: ignore[misc,valid-type]
        """An SDK span built by :class:`SpanStarter` for a sampled RPC (see
        :func:`_lean_span_type`)."""

        # every other field opentelemetry.sdk.trace.Span.__init__ sets, as class defaults
        # (a write makes it the span's own); checked against the installed SDK by
        # _lean_fields_match before this path is used. The provider's subclass adds
        # _resource, _instrumentation_info, _instrumentation_scope, _sampler,
        # _span_processor, _limits and _sdk.
        _end_time: int | None = None
        _events: Any = ()
        _links: Any = ()
        _status = _UNSET_STATUS
        _trace_config = None
        _record_exception = True
        _set_status_on_exception = True
        _record_end_metrics: Any = None
        _sdk: _Sdk
        _readable_type = LeanReadableSpan  # its provider's subclass (_Sdk.__init__)
        _meshkit_lean = True  # what set_mesh_attributes checks (isinstance runs abc's hook)

        def __init__(self, name: str, context: SpanContext, parent: SpanContext | None,
                     kind: SpanKind, attributes: dict[str, Any], start_ns: int) -> None:
            # SpanStarter.start sets these seven fields as one __dict__ (no frame): keep
            # in step (tests/observability/test_sdk_spans.py compares the two)
            self._name = name
            self._context = context
            self._kind = kind
            self._parent = parent
            self._start_time = start_ns
            self._attributes: Any = attributes
            self._lock = threading.Lock()

        def get_span_context(self) -> SpanContext:
            return self._context

        def _bounded(self) -> Any:
            attrs = self._attributes
            if type(attrs) is dict:
                limits = self._limits
                attrs = self._attributes = BoundedAttributes(
                    limits.max_span_attributes, attrs, immutable=False,
                    max_value_len=limits.max_span_attribute_length)
            return attrs

        def set_attributes(self, attributes: Any) -> None:
            with self._lock:
                if self._end_time is not None:
                    _sdk_log.warning("Setting attribute on ended span.")
                    return
                self._bounded()._set_items(attributes)

        def set_attribute(self, key: str, value: Any) -> None:
            with self._lock:
                if self._end_time is not None:
                    _sdk_log.warning("Setting attribute on ended span.")
                    return
                self._bounded()[key] = value

        def _add_event(self, event: Any) -> None:
            self._append("_events", self._limits.max_events, event, "_add_event")

        def _add_link(self, link: Any) -> None:
            self._append("_links", self._limits.max_links, link, "_add_link")

        def _append(self, field: str, maxlen: int | None, item: Any, what: str) -> None:
            """Append to the events or links list, made (bounded) at the first item."""
            if self._end_time is not None:
                _sdk_log.warning("Calling %s on an ended span.", what)
                return
            items = getattr(self, field)
            if type(items) is tuple:
                items = BoundedList(maxlen)
                setattr(self, field, items)
            items.append(item)

        def end(self, end_time: int | None = None) -> None:
            self._meshkit_end(None, end_time)

        def _meshkit_end(self, attributes: dict[str, Any] | None,
                         end_time: int | None) -> None:
            """``set_mesh_attributes(self, attributes)`` (``None``: none) and
            ``end(end_time)`` in one step: what meshkit's interceptors call for a call
            that ends without events or an error status."""
            with self._lock:
                if self._end_time is not None:
                    _sdk_log.warning("Calling end() on an ended span.")
                    return
                self._end_time = end_time if end_time is not None else _time_ns()
                attrs = self._attributes
                if type(attrs) is dict:  # (one type test: a cut of 7 bytecodes per span)
                    if attributes is not None:
                        attrs.update(attributes)
                else:  # the SDK's bounded attributes (a user's attribute made them)
                    if attributes is not None:
                        attrs._set_items(attributes)
                    attrs._immutable = True
            if self._record_end_metrics is not None:
                self._record_end_metrics()
            sdk = self._sdk
            hooks = sdk.hooks
            if sdk.multi._span_processors is not hooks[0]:  # a processor added
                hooks = sdk.rehook()
            for ending in hooks[2]:
                ending(self)
            if hooks[3]:
                if fast_readable:  # the SDK's _readable_span, slotted and inline
                    rs = new(self._readable_type)  # (its provider's resource and scope)
                    rs._name = self._name
                    rs._context = self._context
                    rs._kind = self._kind
                    rs._parent = self._parent
                    rs._start_time = self._start_time
                    rs._end_time = self._end_time
                    rs._attributes = attrs
                    rs._events = self._events
                    rs._links = self._links
                    rs._status = self._status
                else:
                    rs = super()._readable_span()
                ctx = self._context
                sampled = ctx[3] & 1 if _SC_TUPLE else ctx.trace_flags.sampled
                for on_end, sampled_only in hooks[3]:
                    if sampled or not sampled_only:
                        on_end(rs)

    _lean_types.append(LeanSdkSpan)
    return LeanSdkSpan


def set_mesh_attributes(span: Span, attributes: dict[str, Any]) -> None:
    """Add meshkit's own (valid, few) ``attributes`` to a recording ``span``: straight
    into a lean span's attribute dict, else through ``set_attributes``."""
    if getattr(span, "_meshkit_lean", False):
        lean: Any = span
        with lean._lock:
            if lean._end_time is None:
                attrs = lean._attributes
                if type(attrs) is dict:
                    attrs.update(attributes)
                    return
        if lean._end_time is not None:
            return
    span.set_attributes(attributes)


def _lean_fields_match(tracer: Any) -> bool:
    """Whether a lean span has every field an SDK span of the installed SDK has (and the
    tracer the parts it is built from): else the SDK's own path is used."""
    try:
        ref = _sdk._Span(name="probe", context=SpanContext(1, 1, False),
                         resource=tracer.resource)
        lean = type("LeanProbe", (_lean_span_type(),), {
            "_resource": ref.resource, "_instrumentation_info": None,
            "_instrumentation_scope": None, "_sampler": None, "_span_processor": None,
            "_limits": ref._limits, "_sdk": None})
        probe = lean("probe", SpanContext(1, 1, False), None, SpanKind.INTERNAL, {}, 1)
        own = set(vars(probe)) | set(vars(lean)) | set(vars(_lean_span_type()))
        return set(vars(ref)) <= own and all(
            hasattr(tracer, a) for a in ("resource", "instrumentation_info",
                                         "_instrumentation_scope", "span_processor",
                                         "_span_limits"))
    except Exception:  # pragma: no cover - an SDK shaped differently: its own path
        return False


_BSP_ON_END_NAMES = ("context", "trace_flags", "sampled", "_batch_processor", "emit")


def _batch_emit(processor: Any) -> Any:
    """``processor._batch_processor.emit`` when ``processor`` is the SDK's
    ``BatchSpanProcessor`` (exactly that class) whose ``on_end`` is the SDK's: it reads
    the span's sampled flag and hands a sampled span to its batch's ``emit``, and nothing
    else (checked on its code's names); else ``None``."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if type(processor) is not BatchSpanProcessor:
        return None
    code = getattr(type(processor).on_end, "__code__", None)
    emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
    if code is None or code.co_names != _BSP_ON_END_NAMES or not callable(emit):
        return None
    return emit


class _NoMulti:
    """:attr:`_Sdk.multi` of a provider whose span processor is not the SDK's synchronous
    multi-processor: its processors, as a span's per-call check reads them, are never
    replaced (``None``, as the hooks' first entry is then)."""

    __slots__ = ()
    _span_processors = None


_NO_MULTI: Any = _NoMulti()


class _Sdk:
    """What one SDK provider needs per span: its sampler and a tracer of meshkit's
    (``generic``: a provider of another API implementation, whose tracer makes every
    span and decision itself), and what a lean span is built from (``lean``: the span
    class, ``None`` when the SDK's own ``start_span`` must build spans)."""

    __slots__ = ("config_enabled", "default_ids", "enabled", "generic", "hooks", "ids",
                 "lean", "metrics", "multi", "new_span_id", "new_trace_id", "parent_based",
                 "processor", "random_ids", "replay", "root_bound", "sampler", "static",
                 "tracer")

    def __init__(self, provider: Any, *, generic: bool = False) -> None:
        self.tracer = provider.get_tracer("meshkit.observability")
        self.generic = generic
        self.sampler: Any = None if generic else provider.sampler
        self.parent_based = not generic and _is_default_parent_based(self.sampler)
        self.ids: _PresetTraceIds | None = None
        self.replay: _ReplaySampler | None = None
        self.lean: Any = None
        # ids as the provider's generator makes them (the SDK's random one: drawn here)
        gen: Any = getattr(self.tracer, "id_generator", None)
        custom = gen is not None and type(gen) is not _sdk.id_generator.RandomIdGenerator \
            if not generic else False
        self.new_trace_id: Any = gen.generate_trace_id if custom else _new_trace_id
        self.new_span_id: Any = gen.generate_span_id if custom else _new_span_id
        self.default_ids = not custom  # drawn inline: _getrandbits(n) or _new_..._id()
        self.random_ids = bool(gen.is_trace_id_random()) if custom and hasattr(
            gen, "is_trace_id_random") else True
        # a root decided by ParentBased(TraceIdRatioBased / ALWAYS_ON / ALWAYS_OFF): the
        # ratio rule applied here (trace id's low 64 bits below the bound), as the SDK does
        self.root_bound: int | None = None
        # ALWAYS_ON / ALWAYS_OFF: the same decision for every span, parent or not
        self.static: bool | None = None
        if not generic and self.sampler is _sdk.sampling.ALWAYS_ON:
            self.static = True
        elif not generic and self.sampler is _sdk.sampling.ALWAYS_OFF:
            self.static = False
        if self.parent_based:
            root = getattr(self.sampler, "_root", None)
            sampling = _sdk.sampling
            if type(root) is sampling.TraceIdRatioBased:
                self.root_bound = int(root.bound)
            elif root is sampling.ALWAYS_ON:
                self.root_bound = sampling.TraceIdRatioBased.TRACE_ID_LIMIT + 1
            elif root is sampling.ALWAYS_OFF:
                self.root_bound = 0
        if generic:
            return
        t = self.tracer
        limits = getattr(t, "_span_limits", None)
        if (limits is not None and _lean_fields_match(t)
                and (limits.max_span_attributes is None
                     or limits.max_span_attributes >= _LEAN_MIN_ATTRIBUTES)
                and limits.max_span_attribute_length is None):
            self.processor = t.span_processor
            shared = {"_resource": t.resource, "_instrumentation_info": t.instrumentation_info,
                      "_instrumentation_scope": t._instrumentation_scope}
            lean = _lean_span_type()
            self.lean = type("LeanSdkSpan", (lean,), {
                **shared, "_sampler": self.sampler, "_span_processor": self.processor,
                "_limits": limits, "_sdk": self, "__module__": __name__,
                "_readable_type": type("LeanReadableSpan", (lean._readable_type,), {
                    **shared, "__slots__": (), "__module__": __name__})})
            # the synchronous multi-processor's processors are called one by one (its
            # tuple is re-read when a processor is added); any other processor as a whole
            # (_NO_MULTI: the processors a span compares with its hooks' are None, as theirs)
            multi = self.processor
            self.multi = multi if type(multi) is _sdk.SynchronousMultiSpanProcessor and \
                type(getattr(multi, "_span_processors", None)) is tuple else _NO_MULTI
            self.hooks: tuple[Any, ...] = ()
            self.rehook()
            # the tracer's _is_enabled (its configurator's switch): read inline when it
            # is the SDK's one-attribute read, else called per span
            self.enabled = getattr(t, "_is_enabled", None)
            code = getattr(getattr(self.enabled, "__func__", None), "__code__", None)
            self.config_enabled = code is not None and code.co_names == (
                "_tracer_config", "is_enabled") and hasattr(t, "_tracer_config")
            if self.config_enabled:
                self.enabled = None
            counting = getattr(t, "_tracer_metrics", None)  # the SDK's own span metrics
            self.metrics = None if counting is None or type(counting).__name__ == \
                "NoOpTracerMetrics" else counting.start_span
        else:  # the SDK's start_span builds spans, with meshkit's trace id and decision
            # (the provider's tracer is shared: a wrapper set by another _Sdk is reused)
            if gen is not None:
                self.ids = gen if isinstance(gen, _PresetTraceIds) else _PresetTraceIds(gen)
                t.id_generator = self.ids
            inner = getattr(t, "sampler", None)
            if isinstance(inner, _ReplaySampler):
                self.replay = inner
            elif inner is not None:
                self.replay = t.sampler = _ReplaySampler(inner)

    def rehook(self) -> tuple[Any, ...]:
        """The processors' hooks a lean span calls: ``(processors, on_start, _on_ending,
        on_end)``, tuples of bound methods without the no-op ones (:func:`_is_noop`); the
        ``on_end`` entries are ``(hook, sampled_only)`` pairs. The SDK's own
        ``BatchSpanProcessor`` (that class exactly, its ``on_end`` reading only what it
        reads in opentelemetry-sdk 1.x: the span's sampled flag, then its batch's
        ``emit``) is represented by that ``emit`` with ``sampled_only``: the span passes
        its sampled flag, known when it ends, instead of three property reads."""
        multi = self.multi
        procs = (self.processor,) if multi is _NO_MULTI else multi._span_processors

        def hooks(name: str) -> tuple[Any, ...]:
            found = (getattr(p, name, None) for p in procs)
            return tuple(h for h in found if h is not None and not _is_noop(h))

        ends = []
        for p in procs:
            on_end = getattr(p, "on_end", None)
            if on_end is None or _is_noop(on_end):
                continue
            emit = _batch_emit(p)
            ends.append((on_end, False) if emit is None else (emit, True))
        self.hooks = (None if multi is _NO_MULTI else procs, hooks("on_start"),
                      hooks("_on_ending"), tuple(ends))
        return self.hooks


_env_provider: list[bool] = []  # whether OTEL_PYTHON_TRACER_PROVIDER was set (read once)


class _NoProviderSlot:
    """An API module without the global tracer provider slot: never set."""

    _TRACER_PROVIDER = None


# where the per-call paths read the API's global provider slot, ``trace._TRACER_PROVIDER``
# (``getattr(trace, "_TRACER_PROVIDER", None)`` as one attribute read: 4 bytecodes fewer)
_PROVIDER_SLOT: Any = trace if hasattr(trace, "_TRACER_PROVIDER") else _NoProviderSlot()


def _global_provider() -> Any:
    """``trace.get_tracer_provider()``, without its ``os.environ`` lookup on every call
    while no global provider is set: ``OTEL_PYTHON_TRACER_PROVIDER`` (a provider the API
    loads by name) is read at the first call, as the SDK reads its ``OTEL_*`` variables
    once."""
    p = getattr(trace, "_TRACER_PROVIDER", None)
    if p is not None:
        return p
    if not _env_provider:  # blank is unset (see _installed_provider)
        _env_provider.append(bool(os.environ.get(_PROVIDER_VAR, "").strip()))
    return trace.get_tracer_provider() if _env_provider[0] else _PROXY_PROVIDER


_PROXY_PROVIDER = trace.ProxyTracerProvider()  # no global provider yet: no SDK spans
_PROVIDER_VAR = "OTEL_PYTHON_TRACER_PROVIDER"


def _installed_provider() -> Any:
    """``trace.get_tracer_provider()`` with ``OTEL_PYTHON_TRACER_PROVIDER`` (a provider the
    API loads by entry-point name and installs, while none is) read as meshkit reads its
    other variables: blank is unset (the API's proxy; the API itself looked the name
    ``" "`` up and raised ``StopIteration``, which ended ``MeshServer.start()`` as
    ``RuntimeError: coroutine raised StopIteration``).

    Raises:
        ConfigError: the variable names a provider the API cannot load (no installed
            ``opentelemetry_tracer_provider`` entry point of that name, or one that fails
            to build); the variable named, its value quoted.
    """
    installed = getattr(trace, "_TRACER_PROVIDER", None)
    if installed is not None:
        return installed
    raw = os.environ.get(_PROVIDER_VAR)
    if raw is not None and not raw.strip():
        return _PROXY_PROVIDER
    try:
        return trace.get_tracer_provider()
    except Exception:  # StopIteration: no entry point of that name
        raise ConfigError(f"{_PROVIDER_VAR} must name an installed tracer provider (an "
                          f"opentelemetry_tracer_provider entry point), got {raw!r}"
                          ) from None


class SpanStarter:
    """Starts meshkit's spans, building an SDK span only when the trace is sampled.

    When the provider's sampler drops the trace, the span is a
    :class:`~opentelemetry.trace.NonRecordingSpan` carrying a fresh span id
    (``random.getrandbits``, like the SDK's generator) under the parent's (or a fresh)
    trace id, the sampled flag cleared and the sampler's tracestate, as the SDK's
    ``start_span`` builds it. Without an SDK :class:`TracerProvider` (the API's no-op or
    proxy one) under a valid parent, it is a ``NonRecordingSpan`` carrying the parent's
    own span context, as the OpenTelemetry API gives it without an SDK ("Behavior of the
    API in the absence of an installed SDK"): the next hop's parent is the caller's span,
    the sampled flag passed through (reserved flags cleared, W3C Trace Context). Either
    way trace context still propagates and log lines carry ``trace_id``/``span_id``.
    Without an SDK and without a parent there is no span (nothing to continue or record;
    a downstream service samples on its own).
    The provider's sampler (the configured one) decides once, as it would in the SDK
    (``ParentBased`` with a ratio, ``ALWAYS_ON`` or ``ALWAYS_OFF`` root, and the static
    samplers, are evaluated here on the trace id; any other sampler is asked). A sampled
    span is an SDK span built without ``Tracer.start_span``'s generic path (a
    ``LeanSdkSpan``, see :func:`_lean_span_type`), with ids from the provider's id
    generator; where span limits could cut meshkit's attributes, or the installed SDK's
    span has fields a lean span does not set, the SDK tracer builds it with the trace id
    meshkit sampled on and, when the sampler was asked, its answer (:class:`_ReplaySampler`:
    not a second question).

    Args:
        provider: the :class:`TelemetryOptions` ``tracer_provider``; ``None`` follows the
            global provider, also one installed later.
        kind: the :class:`~opentelemetry.trace.SpanKind` of every span.
    """

    __slots__ = ("_explicit", "_kind", "_provider", "_sdk")

    def __init__(self, provider: Any, kind: SpanKind) -> None:
        self._explicit = provider
        self._kind = kind
        self._provider: Any = object()
        self._sdk: _Sdk | None = None

    def _resolve(self) -> _Sdk | None:
        p = self._explicit
        if p is None:  # the global one: _global_provider(), its installed case inline
            p = _PROVIDER_SLOT._TRACER_PROVIDER
            if p is None:
                p = _global_provider()
        if p is not self._provider:
            self._provider = p
            if _sdk is not None and isinstance(p, _sdk.TracerProvider):
                # a provider built under OTEL_SDK_DISABLED=true makes no spans (its
                # tracers are the API's no-op one): trace context passes as without an SDK
                self._sdk = None if getattr(p, "_disabled", False) is True else _Sdk(p)
            elif isinstance(p, trace.NoOpTracerProvider | trace.ProxyTracerProvider):
                self._sdk = None
            else:  # another API implementation: its tracer decides everything
                self._sdk = _Sdk(p, generic=True)
        return self._sdk

    def makes_root(self) -> bool:
        """Whether :meth:`start` makes a span for a call without a parent now: an SDK
        provider (or another API implementation's) is in use, ``provider`` or the global
        one. While neither is set, one look at the API's global provider slot decides,
        without resolving: a provider installed later is seen at the next call."""
        if (self._explicit is None and _env_provider and not _env_provider[0]
                and _PROVIDER_SLOT._TRACER_PROVIDER is None):
            return False
        return self._resolve() is not None

    def nothing_to_carry(self) -> bool:
        """Whether a client call now has no trace context to start or carry
        (:meth:`current_parent` is ``False``)."""
        return self.current_parent() is False

    def current_parent(self) -> SpanContext | Literal[False] | None:
        """The parent of a client call's span, read from the current OpenTelemetry context
        in one step: the current span's context when it is valid, ``None`` for a root (no
        valid span current), ``False`` when the call has no trace context to start or
        carry: the current context holds nothing (no span, no baggage), the global
        propagator is the default W3C pair (:func:`fast_propagation`: it writes nothing
        for an empty context) and no span is made without a parent (:meth:`makes_root`).
        The shipped defaults without an SDK take the ``False`` path on every call (with
        the server's :meth:`makes_root`, tracing without an SDK went from 274 to 143
        bytecodes per call, client and server, ``benchmarks.opcodes``; this and the
        current span's context in one frame: a frame and 20 bytecodes fewer per traced
        call)."""
        ctx = _current_otel()
        if ctx:  # a span or baggage to carry: current_span_context(), inline
            span = ctx.get(_SPAN_KEY) if _RUNTIME is not None else trace.get_current_span(ctx)
            if span is None:
                return None
            sc = span.get_span_context()
            return sc if sc.is_valid else None
        if not (_fast_cache[1] if _TEXTMAP._HTTP_TEXT_FORMAT is _fast_cache[0]
                else fast_propagation()):
            return None
        if self._explicit is None:
            if (_env_provider and not _env_provider[0]
                    and _PROVIDER_SLOT._TRACER_PROVIDER is None):  # makes_root, inline
                return False
        elif self._sdk is not None:  # the given SDK provider's, resolved (as in start)
            return None
        return False if self._resolve() is None else None

    def start(self, name: str, parent: SpanContext | None, context: Any,
              attributes: dict[str, Any]) -> Span | None:
        """A span ``name`` under ``parent`` (a valid span context, or ``None`` for a root);
        ``context`` is the OpenTelemetry ``Context`` holding that parent for the SDK path
        (``None``: built from a remote ``parent``, else the current one, without its span
        for a root: :func:`_parent_context`). ``None`` when
        there is no trace context to carry (no SDK provider and no parent)."""
        sdk = self._sdk
        if sdk is None or self._explicit is None:  # none resolved yet, or the global one's
            sdk = self._resolve()
        if sdk is None and parent is None:
            return None
        if parent is not None:
            if _SC_TUPLE:
                tid, sid, remote, flags, state, valid = parent
            else:  # pragma: no cover - another SpanContext layout
                tid, sid, remote, flags, state, valid = (
                    parent.trace_id, parent.span_id, parent.is_remote, parent.trace_flags,
                    parent.trace_state, parent.is_valid)
        else:
            tid = (_getrandbits(128) or _new_trace_id()) if sdk is None or sdk.default_ids \
                else sdk.new_trace_id()
            state = None
            valid = False  # (a random root's trace id is valid: see below)
        if sdk is None:
            if parent is None:  # nothing to continue, nothing to record: no trace context
                return None
            # the parent's span context, as the API without an SDK gives it (so the next
            # hop's parent is the caller's span, one that exists); the sampled and
            # random-trace-id flags go on, the others are reserved, and W3C Trace Context
            # says vendors MUST set them to zero
            kept = flags & _KEPT_FLAGS
            if kept == flags:
                return NonRecordingSpan(parent)
            return NonRecordingSpan(SpanContext(tid, sid, remote, _FLAGS[kept], state))
        if sdk.generic:
            generic: Span = sdk.tracer.start_span(name, _parent_context(parent, context),
                                                  self._kind, attributes)
            return generic
        if parent is not None and sdk.parent_based:
            record = sampled = bool(flags & _SAMPLED)
        elif parent is None and sdk.root_bound is not None:
            record = sampled = tid & _TRACE_ID_LIMIT < sdk.root_bound
        elif sdk.static is not None:
            record = sampled = sdk.static
        else:
            context = _parent_context(parent, context)
            result = sdk.sampler.should_sample(context, tid, name, self._kind, attributes)
            record, sampled = result.decision.is_recording(), result.decision.is_sampled()
            state = result.trace_state  # the span's, recorded or not, as in the SDK
            if record and sdk.lean is not None:  # what the sampler added and set
                attributes = result.attributes or {}
            elif record and sdk.replay is not None:  # the SDK's path, without a 2nd question
                if parent is None and sdk.ids is not None:
                    sdk.ids.preset(tid)
                return sdk.replay.start_span(result, sdk.tracer, name, context, self._kind,
                                             attributes)
        if not record:
            # not sampled, but the random-trace-id flag goes on (W3C Trace Context level 2:
            # it "MUST also be set in all outgoing traceparent headers" of that trace id),
            # as on the sampled path (a lean span); the tracestate is the parent's, or the
            # one a sampler that was asked returned (the SDK's start_span does the same)
            random_ids = flags & _RANDOM if parent is not None \
                else (_RANDOM if sdk.random_ids else 0)
            sid = _getrandbits(64) or _new_span_id()  # (never 0 nor too wide: valid)
            if _SC_TUPLE:  # SpanContext(...) without its __new__ frame: 2 frames, 30
                # bytecodes fewer per unsampled span; valid as the trace id is
                return NonRecordingSpan(_tuple_new(SpanContext, (
                    tid, sid, False, _FLAGS[random_ids],
                    _EMPTY_STATE if state is None else state,
                    valid or 0 < tid <= _TRACE_ID_MAX)))
            return NonRecordingSpan(SpanContext(  # pragma: no cover - another layout
                tid, sid, False, _FLAGS[random_ids], state))
        if sdk.lean is None:
            if parent is None and sdk.ids is not None:
                sdk.ids.preset(tid)
            span: Span = sdk.tracer.start_span(name, _parent_context(parent, context),
                                               self._kind, attributes)
            return span
        # a lean SDK span (sdk.lean), started: what the SDK's start_span would build for
        # this decision, with the processors' on_start called. Inline, not a method of
        # _Sdk: a frame less per sampled span (start and a _Sdk.span of its own: 70 + 120
        # bytecodes per span -> 164, benchmarks.opcodes)
        if not (sdk.tracer._tracer_config.is_enabled if sdk.config_enabled
                else sdk.enabled is None or sdk.enabled()):
            return NonRecordingSpan(parent if parent is not None else INVALID_SPAN_CONTEXT)
        random_ids = flags & _RANDOM if parent is not None \
            else (_RANDOM if sdk.random_ids else 0)
        flags = _FLAGS[(_SAMPLED if sampled else _NOT_SAMPLED) | random_ids]
        if sdk.default_ids:
            # a random span id is never 0 nor too wide: the context is valid when its trace
            # id is (a valid parent's, or a random root's; else checked)
            sid = _getrandbits(64) or _new_span_id()
            valid = valid or parent is None or 0 < tid <= _TRACE_ID_MAX
        else:
            sid = sdk.new_span_id()
            valid = 0 < tid <= _TRACE_ID_MAX and 0 < sid <= _TRACE_ID_LIMIT
        if _SC_TUPLE:  # SpanContext(...) without its __new__ frame (ids from the generator)
            ctx = _tuple_new(SpanContext, (
                tid, sid, False, flags, _EMPTY_STATE if state is None else state, valid))
        else:  # pragma: no cover - another SpanContext layout
            ctx = SpanContext(tid, sid, False, flags, state)
        lean = _object_new(sdk.lean)  # the class's __new__ only refuses the SDK's base
        # what LeanSdkSpan.__init__ sets, without its frame
        lean.__dict__ = {"_name": name, "_context": ctx, "_kind": self._kind,
                         "_parent": parent, "_start_time": _time_ns(),
                         "_attributes": dict(attributes), "_lock": _new_lock()}
        if sdk.metrics is not None:
            lean._record_end_metrics = sdk.metrics(
                parent, _sdk.sampling.Decision.RECORD_AND_SAMPLE if sampled
                else _sdk.sampling.Decision.RECORD_ONLY)
        hooks = sdk.hooks
        if sdk.multi._span_processors is not hooks[0]:  # a processor added
            hooks = sdk.rehook()
        if hooks[1]:
            context = _parent_context(parent, context)
            for on_start in hooks[1]:
                on_start(lean, parent_context=context)
        started: Span = lean
        return started


def _parent_context(parent: SpanContext | None, context: Any) -> Any:
    """The OpenTelemetry ``Context`` a sampler, the SDK's ``start_span`` and processors'
    ``on_start`` get for ``parent``: ``context`` when given, else one holding a remote
    ``parent``, else the current one; for a root (``parent`` ``None``) without a
    ``context``, ``None`` (the SDK's default: the current one) while no valid span is
    current, else the current context with the invalid span over that one (a server's
    handler task inherits the context its server was started in, whose span is no parent
    of a call that brought no trace context: the SDK and a sampler would take it for one).
    """
    if context is None:
        if parent is not None:
            return trace.set_span_in_context(NonRecordingSpan(parent)) \
                if parent.is_remote else otel_context.get_current()
        if current_span_context().is_valid:
            return trace.set_span_in_context(trace.INVALID_SPAN)
    return context


def _runtime_context() -> tuple[Any, str] | None:
    """opentelemetry-api's context variable (its default contextvars runtime context) and
    the span key, or ``None`` under another runtime context (then the API's own calls)."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace import propagation

        rc: Any = getattr(otel_context, "_RUNTIME_CONTEXT")  # noqa: B009 - private
        var, key = rc._current_context, propagation._SPAN_KEY
    except (AttributeError, ImportError):  # pragma: no cover - another API layout
        return None
    ok = type(rc) is ContextVarsRuntimeContext and isinstance(var, ContextVar) \
        and isinstance(key, str)
    return (var, key) if ok else None


_RUNTIME = _runtime_context()
_Context = otel_context.Context
# its parts, for what reads the current span on every call: the current context (the
# variable's bound get; the API's own under another runtime context) and the span key
_current_otel: Callable[[], Any] = (otel_context.get_current if _RUNTIME is None
                                    else _RUNTIME[0].get)
_SPAN_KEY = "" if _RUNTIME is None else _RUNTIME[1]
# and the variable's bound set and reset (attach_span, detach_context: no tuple read per
# call), when it is the API's context variable
_set_otel: Callable[[Any], Any] = otel_context.attach if _RUNTIME is None \
    else _RUNTIME[0].set
_reset_otel: Callable[[Any], Any] = otel_context.detach if _RUNTIME is None \
    else _RUNTIME[0].reset


def span_in_context(span: Span, base: Any = None) -> Any:
    """``trace.set_span_in_context(span, base)``: a new OpenTelemetry ``Context`` holding
    ``span`` over ``base`` (default: the current context), in one step."""
    if _RUNTIME is None:  # pragma: no cover - another runtime context
        return trace.set_span_in_context(span, base)
    var, key = _RUNTIME
    return _Context({**(var.get() if base is None else base), key: span})


def current_span_context() -> SpanContext:
    """``trace.get_current_span().get_span_context()``: the current span's context
    (invalid when there is none)."""
    if _RUNTIME is None:  # pragma: no cover - another runtime context
        return trace.get_current_span().get_span_context()
    span = _current_otel().get(_SPAN_KEY)
    return INVALID_SPAN_CONTEXT if span is None else span.get_span_context()


def current_span_context_or_none() -> SpanContext | None:
    """:func:`current_span_context`, but ``None`` when no span is current: what an access
    line takes (:func:`~meshkit.observability._logging.write_access`), which then has no
    context to unpack (a current span's context may still be invalid)."""
    if _RUNTIME is None:  # pragma: no cover - another runtime context
        return trace.get_current_span().get_span_context()
    span = _current_otel().get(_SPAN_KEY)
    return None if span is None else span.get_span_context()


def baggage_set(context: Any = None) -> bool:
    """Whether ``context`` (default: the current one) carries baggage:
    ``bool(baggage.get_all(context))`` read straight from the context."""
    if context is None:
        if _RUNTIME is None:  # pragma: no cover - another runtime context
            return bool(baggage.get_all())
        context = _RUNTIME[0].get()
    if _BAGGAGE_KEY is None or not isinstance(context, dict):  # pragma: no cover
        return bool(baggage.get_all(context))
    return bool(context.get(_BAGGAGE_KEY))


def attach_span(span: Span, base: Any = None) -> Any:
    """``attach(set_span_in_context(span, base))``: make a context holding ``span`` over
    ``base`` (default: the current context) current; returns the token for
    :func:`detach_context`."""
    if _RUNTIME is None:  # pragma: no cover - another runtime context
        return otel_context.attach(trace.set_span_in_context(span, base))
    return _set_otel(_Context({**(_current_otel() if base is None else base),
                               _SPAN_KEY: span}))


def attach_context(ctx: Any) -> Any:
    """``opentelemetry.context.attach(ctx)``: make ``ctx`` current; returns the token for
    :func:`detach_context`."""
    if _RUNTIME is None:  # pragma: no cover - another runtime context
        return otel_context.attach(ctx)
    return _RUNTIME[0].set(ctx)


def detach_context(token: Any, finalized: bool = False) -> None:
    """``opentelemetry.context.detach(token)``: restore the context before the attach that
    gave ``token`` (a token from another context is logged by the API, never raised).

    ``finalized``: the attach was made in a streaming handler's async generator that is
    now being closed by the event loop's finalizer (``GeneratorExit``), in another task
    and context than the one it attached in, which is gone: a token from another context
    is then nothing to restore, and not logged (the API logs "Failed to detach context"
    with a traceback, for every stream a client cancelled)."""
    if _RUNTIME is not None:
        try:
            _reset_otel(token)
            return
        except ValueError:  # created in another Context
            if finalized:
                return
        except (RuntimeError, TypeError):
            pass
    otel_context.detach(token)


_SC_TUPLE = SPAN_CONTEXT_IS_TUPLE
_EMPTY_STATE = DEFAULT_TRACE_STATE
_BAGGAGE_KEY: str | None = getattr(baggage, "_BAGGAGE_KEY", None)  # where baggage lives
_object_new = object.__new__
_tuple_new = tuple.__new__


_TRACEPARENT = "traceparent"
_TRACE_KEYS = frozenset({_TRACEPARENT, "tracestate", "baggage"})  # what parse_traceparent reads
# a version-00 traceparent, lower-case hex only (W3C Trace Context, section 3.2): one regex
# match, not a set test per character (about 1 us per traced call less on the server)
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def fast_propagation() -> bool:
    """Whether the global propagator is the default W3C pair (``tracecontext,baggage``),
    which meshkit reads and writes itself on the hot path."""
    prop = propagate.get_global_textmap()
    if prop is _fast_cache[0]:
        return bool(_fast_cache[1])
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    inner = getattr(prop, "_propagators", None) if isinstance(
        prop, CompositePropagator) else None
    ok = inner is not None and sorted(type(p).__name__ for p in inner) == sorted(
        ("TraceContextTextMapPropagator", "W3CBaggagePropagator")) and all(
        type(p) in (TraceContextTextMapPropagator, W3CBaggagePropagator) for p in inner)
    _fast_cache[:] = [prop, ok]
    return ok


_fast_cache: list[Any] = [None, False]  # [the global propagator, whether it is the pair]


class _AskedTextMap:
    """The global propagator asked of ``propagate.get_global_textmap()`` at each read, for
    an API whose function is not the one-global read :data:`_TEXTMAP` expects."""

    @property
    def _HTTP_TEXT_FORMAT(self) -> Any:  # (the API's global's name)
        return propagate.get_global_textmap()


def _textmap_home() -> Any:
    """Where the hot path reads the global propagator, as ``get_global_textmap()`` does
    (its ``_HTTP_TEXT_FORMAT``, without the function's frame: three per traced call):
    the API's module when the function reads that global and nothing else, else an
    :class:`_AskedTextMap`."""
    get = propagate.get_global_textmap
    code = getattr(get, "__code__", None)
    reads_it = code is not None and code.co_names == ("_HTTP_TEXT_FORMAT",) and \
        getattr(get, "__globals__", None) is vars(propagate) and \
        hasattr(propagate, "_HTTP_TEXT_FORMAT")
    return propagate if reads_it else _AskedTextMap()


_TEXTMAP: Any = _textmap_home()  # its ._HTTP_TEXT_FORMAT: propagate.get_global_textmap()


def parse_traceparent(metadata: Sequence[Any] | None) -> SpanContext | Literal[False] | None:
    """The remote parent in incoming ``metadata`` when only a version-00 ``traceparent``
    (and no ``tracestate`` or ``baggage``) is there: a :class:`SpanContext`, ``None`` when
    there is no trace context at all or it is invalid (W3C: ignore it), ``False`` when
    the general propagator must read it (also whenever the global propagator is not the
    default W3C pair, :func:`fast_propagation`)."""
    if not (_fast_cache[1] if _TEXTMAP._HTTP_TEXT_FORMAT is _fast_cache[0] else fast_propagation()):
        return False
    found = None
    for k, v in metadata or ():
        if k in _TRACE_KEYS:  # (one test per key that is none of them, not three)
            if found is not None or k != _TRACEPARENT:
                return False
            found = v
    if found is None:
        return None
    # the match first (a valid version-00 header is 55 characters starting "00-"):
    # the length and version are read only when it fails
    try:
        parts = _TRACEPARENT_00.fullmatch(found)
    except TypeError:  # not text
        return False
    if parts is None:  # a version-00 header that is invalid is ignored, another version
        return None if len(found) == 55 and found.startswith("00-") else False
    tid_hex, sid_hex, flags_hex = parts.groups()
    tid, sid = int(tid_hex, 16), int(sid_hex, 16)
    if not tid or not sid:
        return None
    flags = int(flags_hex, 16)
    if _SC_TUPLE:  # SpanContext(...) without its __new__ frame: both ids valid here
        return _tuple_new(SpanContext, (tid, sid, True, _FLAGS[flags] if flags < 4
                                        else TraceFlags(flags), _EMPTY_STATE, True))
    return SpanContext(tid, sid, True, TraceFlags(flags))  # pragma: no cover


def inject_span(metadata: MutableSequence[tuple[str, str | bytes]], span: Span,
                context: Any = None) -> None:
    """Write ``span``'s trace context into outgoing ``metadata``: a ``traceparent`` built
    here under the default propagator when no baggage is set, else the global propagator
    with ``context``, the OpenTelemetry ``Context`` holding ``span`` (default: the current
    one with ``span`` over it, built only when the global propagator needs it)."""
    # fast_propagation() and baggage_set(), without their frames when cached; the current
    # context carries the same baggage as one with the span over it
    fast = _fast_cache[1] if _TEXTMAP._HTTP_TEXT_FORMAT is _fast_cache[0] else fast_propagation()
    if fast:
        ctx = context if context is not None else _current_otel()
        if not (ctx.get(_BAGGAGE_KEY) if type(ctx) is _Context and _BAGGAGE_KEY is not None
                else baggage_set(ctx)):
            lean: Any = span
            sc = lean._context if getattr(span, "_meshkit_lean", False) \
                else span.get_span_context()
            if _SC_TUPLE:
                tid, sid, _, flags, state, valid = sc
            else:  # pragma: no cover - another SpanContext layout
                tid, sid, flags, state, valid = (sc.trace_id, sc.span_id, sc.trace_flags,
                                                 sc.trace_state, sc.is_valid)
            if not valid:
                return
            # %-formatting: half the bytecodes of the f-string's three format specs, and
            # about a third less time (timeit, Python 3.11)
            value = "00-%032x-%016x-%02x" % (tid, sid, flags & 0xff)  # noqa: UP031
            for i, (k, _) in enumerate(metadata):  # _SETTER.set, inline: a frame less
                if k == _TRACEPARENT:
                    metadata[i] = (_TRACEPARENT, value)
                    break
            else:
                metadata.append((_TRACEPARENT, value))
            if state is not _EMPTY_STATE and state:
                _SETTER.set(metadata, "tracestate", state.to_header())
            return
    inject_context(metadata, span_in_context(span) if context is None else context)


def instrumentor_active(side: str) -> bool:
    """Whether opentelemetry-instrumentation-grpc's aio instrumentor of ``side``
    (``"server"``/``"client"``) is active in this process (``opentelemetry-instrument``,
    or ``GrpcAioInstrumentorServer().instrument()``): it then makes the spans itself, and
    meshkit does not emit a second set."""
    mod = sys.modules.get("opentelemetry.instrumentation.grpc")
    if mod is None:
        return False
    cls = getattr(mod, "GrpcAioInstrumentorServer" if side == "server"
                  else "GrpcAioInstrumentorClient", None)
    inst = getattr(cls, "_instance", None)
    return bool(getattr(inst, "is_instrumented_by_opentelemetry", False))
