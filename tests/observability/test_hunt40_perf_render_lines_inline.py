"""The access-log batch renders each captured record as ``render_access`` does, its first
step (an event's own line) inline: the event's line when it gives one, else (``None``,
or it raised) the generic JSON of its fields, the event's line asked once; a record with
structlog context captured, or one of a plain event, the generic way; a record nothing
renders, the ``unrenderable`` line."""

from __future__ import annotations

import contextvars
import json
import time
from typing import Any

import pytest

from meshkit.observability import _logging
from meshkit.observability._logging import AccessEvent, _render_lines, render_access


class _Event(AccessEvent):
    __slots__ = ("asked", "how")

    def __init__(self, how: str) -> None:
        self.how = how
        self.asked = 0

    def fields(self, *args: Any) -> dict[str, Any]:
        if self.how == "fields-raise":
            raise TypeError("no fields")
        return {"side": "server", "n": args[0]}

    def line(self, args: tuple[Any, ...], level: str, ts: float, span_context: Any) -> str | None:
        self.asked += 1
        if self.how == "line":
            return f'{{"event":"rpc","n":{args[0]},"level":"{level}"}}'
        if self.how in ("raise", "fields-raise"):
            raise ValueError("orjson refused it")
        return None


def _record(event: Any, ctx: Any = None) -> tuple[Any, ...]:
    return (1796649862.503845, "info", "rpc", event, (7,), ctx, None)


@pytest.mark.skipif(_logging._orjson is None, reason="the event's own line needs orjson")
@pytest.mark.parametrize("how", ["line", "none", "raise", "fields-raise"])
@pytest.mark.parametrize("bound", [False, True], ids=["no-context", "context-captured"])
def test_each_record_rendered_as_render_access_renders_it(how: str, bound: bool) -> None:
    ctx = contextvars.copy_context() if bound else None
    event = _Event(how)
    (line,) = _render_lines([_record(event, ctx)])
    asked = event.asked
    reference = _Event(how)
    if how == "fields-raise":
        with pytest.raises(TypeError):
            render_access(_record(reference, ctx))
        assert json.loads(line)["unrenderable"]
    else:
        assert line == render_access(_record(reference, ctx))
        out = json.loads(line)
        assert out["n"] == 7 and out["event"] == "rpc"
        if how == "line" and not bound:
            assert out == {"event": "rpc", "n": 7, "level": "info"}
        else:
            assert out["side"] == "server" and out["level"] == "info" and "timestamp" in out
    assert asked == (0 if bound else 1) == reference.asked


def test_plain_strings_and_plain_events_pass_through() -> None:
    plain = (time.time(), "warning", "slow", {"ms": 5}, None, None, None)
    lines = _render_lines(["already rendered", plain])
    assert lines[0] == "already rendered"
    out = json.loads(lines[1])
    assert out["event"] == "slow" and out["ms"] == 5 and out["level"] == "warning"
