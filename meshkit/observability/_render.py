"""Render finished spans as an indented tree with timings (for demos and test failures)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from meshkit._log import printable

__all__ = ["render_trace"]

_KINDS = {"SpanKind.SERVER": "server", "SpanKind.CLIENT": "client",
          "SpanKind.INTERNAL": "internal", "SpanKind.PRODUCER": "producer",
          "SpanKind.CONSUMER": "consumer"}
_SHOWN = ("server.address", "network.peer.address", "network.peer.port",
          "meshkit.instance_id", "meshkit.attempt", "meshkit.attempts",
          "meshkit.peer.identity", "meshkit.rate_limited")


def render_trace(spans: Iterable[ReadableSpan], *, trace_id: int | str | None = None,
                 attributes: Sequence[str] = _SHOWN) -> str:
    """Draw finished spans as one tree per trace, children under parents by start time::

        ecom.v1.OrderService/PlaceOrder  client  12.41 ms  OK  [server.address=orderd attempts=1]
        └─ ecom.v1.OrderService/PlaceOrder  server  +0.52 ms  11.02 ms  OK
           └─ ecom.v1.UserService/GetUser  client  +1.10 ms  2.30 ms  OK
              └─ ...

    Each line (characters that are not printable in names and values escaped, ``\\n``,
    ``\\x1b``, ``\\u202e``: they may come from remote callers): span name, kind, offset
    from the root's start (children), duration in milliseconds, gRPC status
    (``rpc.grpc.status_code`` or the span status), a few attributes, and events
    (``· attempt``) below it. Spans whose parent is not among ``spans`` are roots, marked
    ``(parent span not exported)`` when they have a parent (one from a process killed
    before it exported its spans, say).
    Each span is drawn once: spans whose parent links loop (a span its own parent, in a
    corrupted file) are drawn from the earliest of them, marked ``(its parent links
    loop)``.

    Args:
        spans: finished spans, e.g. ``InMemorySpanExporter().get_finished_spans()``.
        trace_id: only this trace (default: every trace in ``spans``, one tree each): an
            int, or the 32 hex digits access lines and span files write.
        attributes: attribute keys shown in brackets, when present (one string: that
            one key).

    Returns:
        The text, lines joined with ``\\n`` (empty string for no spans).

    Raises:
        ValueError: a ``trace_id`` string that is not hexadecimal (quoted).
    """
    if isinstance(trace_id, str):  # as logged: compared with the spans' int ids
        try:
            trace_id = int(trace_id, 16)
        except ValueError:
            raise ValueError(f"trace_id must be hexadecimal, got {trace_id!r}") from None
    if isinstance(attributes, str):  # one key, not a key per character
        attributes = (attributes,)
    chosen = [s for s in spans if s.context is not None
              and (trace_id is None or s.context.trace_id == trace_id)]
    ids = {s.context.span_id for s in chosen if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for s in chosen:
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children.setdefault(parent, []).append(s)
    for group in children.values():
        group.sort(key=lambda s: s.start_time or 0)
    lines: list[str] = []
    drawn: set[int] = set()  # id() of the spans drawn: each once, whatever the links say
    roots = list(children.get(None, []))
    # spans whose parent links loop (a corrupted or edited file: a span its own parent)
    # reach no root: each loop is drawn from its earliest span, marked
    root_ids = {id(s) for s in roots}
    looped = sorted((s for s in chosen if id(s) not in root_ids),
                    key=lambda s: s.start_time or 0)
    by_id: dict[int, ReadableSpan] = {}
    for s in chosen:
        assert s.context is not None
        by_id.setdefault(s.context.span_id, s)
    for root in [*roots, *looped]:
        if id(root) in drawn:
            continue
        if id(root) not in root_ids:  # reaches a loop: start at the loop's earliest span
            root = _loop_start(root, by_id, drawn)
        drawn.add(id(root))
        origin = root.start_time or 0
        line = _line(root, origin, attributes, root=True)
        if id(root) not in root_ids:
            line += "  (its parent links loop)"
        elif root.parent is not None:  # e.g. its process was killed before exporting it
            line += "  (parent span not exported)"
        lines.append(line)
        lines.extend(_events(root, origin, ""))
        _walk(root, children, origin, "", attributes, lines, drawn)
    return "\n".join(lines)


def _loop_start(span: ReadableSpan, by_id: dict[int, ReadableSpan],
                drawn: set[int]) -> ReadableSpan:
    """The earliest span of the loop ``span``'s parent links lead into (``span`` itself
    when they lead to a span drawn already or out of ``by_id``, which a walk from the
    roots rules out)."""
    path: list[ReadableSpan] = []
    at: dict[int, int] = {}  # id() of a span on the path -> its index
    cur: ReadableSpan | None = span
    while cur is not None and id(cur) not in at:
        if id(cur) in drawn or cur.parent is None:
            return span
        at[id(cur)] = len(path)
        path.append(cur)
        cur = by_id.get(cur.parent.span_id)
    if cur is None:
        return span
    return min(path[at[id(cur)]:], key=lambda s: s.start_time or 0)


def _walk(span: ReadableSpan, children: dict[int | None, list[ReadableSpan]], origin: int,
          prefix: str, attributes: Sequence[str], lines: list[str], drawn: set[int]) -> None:
    """Append the lines of ``span``'s descendants not drawn yet, depth first, children by
    start time; without recursion, so a chain of any depth (a corrupted file's) is drawn."""
    # (span, prefix of its line, prefix below it): drawn when popped, last pushed first
    todo: list[tuple[ReadableSpan, str, str]] = []

    def push_kids(parent: ReadableSpan, pre: str) -> None:
        assert parent.context is not None
        kids = [k for k in children.get(parent.context.span_id, []) if id(k) not in drawn]
        drawn.update(id(k) for k in kids)
        for i in range(len(kids) - 1, -1, -1):
            last = i == len(kids) - 1
            todo.append((kids[i], pre + ("└─ " if last else "├─ "),
                         pre + ("   " if last else "│  ")))

    push_kids(span, prefix)
    while todo:
        child, line_prefix, deeper = todo.pop()
        lines.append(line_prefix + _line(child, origin, attributes))
        lines.extend(_events(child, origin, deeper))
        push_kids(child, deeper)


def _text(value: object) -> str:
    """``value`` as text on one line, each character that is not printable escaped as
    ``repr`` writes it (:func:`meshkit._log.printable`, as the access log: ``\\n``,
    ``\\x1b``, and Unicode format characters such as the bidi override ``\\u202e``,
    which would reorder the line on a terminal): span names and attribute values may
    come from remote callers."""
    return printable(str(value))


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms"


def _line(span: ReadableSpan, origin: int, attributes: Sequence[str],
          root: bool = False) -> str:
    attrs: Any = span.attributes or {}
    start = span.start_time or 0
    end = span.end_time or start
    code = attrs.get("rpc.grpc.status_code")
    if code is not None:
        import grpc

        status = next((c.name for c in grpc.StatusCode if c.value[0] == code),
                      _text(code))
    else:
        status = "ERROR" if span.status.status_code is StatusCode.ERROR else "OK"
    parts = [_text(span.name), _KINDS.get(str(span.kind), str(span.kind))]
    if not root:
        parts.append("+" + _ms(start - origin))
    parts += [_ms(end - start), status]
    shown = [f"{_text(k.rsplit('.', 1)[-1] if k.startswith('meshkit.') else k)}="
             f"{_text(attrs[k])}" for k in attributes if k in attrs]
    if shown:
        parts.append("[" + " ".join(shown) + "]")
    return "  ".join(parts)


def _events(span: ReadableSpan, origin: int, prefix: str) -> list[str]:
    out = []
    for ev in span.events or ():
        attrs: Any = ev.attributes or {}
        detail = " ".join(f"{_text(k.rsplit('.', 1)[-1])}={_text(v)}"
                          for k, v in attrs.items())
        out.append(f"{prefix}   · {_text(ev.name)} +{_ms(ev.timestamp - origin)} "
                   f"{detail}".rstrip())
    return out
