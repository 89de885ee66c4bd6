"""One span as a JSON line, as meshkit writes trace files (``MESHKIT_TRACE_FILE``), for the
render_trace tests to build the traces they read back."""

from __future__ import annotations

import json

TRACE = "0af7651916cd43dd8448eb211c80319c"


def span_line(span_id: int, parent: int | None, name: str, start: int,
              attributes: dict[str, object] | None = None) -> str:
    """A CLIENT span of ``TRACE`` lasting 1 us from ``start`` (ns), status OK, ids as
    16 hex digits."""
    return json.dumps({"trace_id": TRACE, "span_id": f"{span_id:016x}",
                       "parent_span_id": None if parent is None else f"{parent:016x}",
                       "name": name, "kind": "CLIENT", "start_ns": start,
                       "end_ns": start + 1_000, "status": "OK",
                       "attributes": attributes or {}, "events": []})
