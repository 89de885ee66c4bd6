"""An access line whose one-step rendering fails (a method name with a lone surrogate,
which orjson refuses) is rendered the generic way, its fields kept.

AccessEvent.line() writes the method through json_str(), i.e. orjson, which refuses a
lone surrogate: the exception left render_access() and the batch wrote the line as
``{"event":"rpc","unrenderable":"(<the record's repr>)"}``, no method, code, duration,
level or timestamp (measured with a real client call of "/hello.v1.Greeter/Say\\udc80"
under configure_logging(json=True)).
"""

from __future__ import annotations

import json
import time
from typing import Any

from meshkit.observability._logging import AccessEvent, json_str, render_access


class _Event(AccessEvent):
    """An access event rendered in one step as the server's and client's are."""

    def fields(self, *args: Any) -> dict[str, Any]:
        method, code = args
        return {"side": "client", "method": method, "code": code}

    def line(self, args: tuple[Any, ...], level: str, ts: float,
             span_context: Any) -> str | None:
        method, code = args
        return (f'{{"event":"rpc","side":"client","method":{json_str(method)},'
                f'"code":{json_str(code)},"level":"{level}","timestamp":"x"}}')


def test_a_line_that_fails_in_one_step_is_rendered_the_generic_way() -> None:
    """The line is JSON with the method (its surrogate escaped), code, level, time."""
    ts = time.time()
    line = render_access((ts, "info", "rpc", _Event(), ("/a.S/Say\udc80", "UNKNOWN"),
                          None, None))
    got = json.loads(line)
    assert "unrenderable" not in got
    assert got["method"] == "/a.S/Say\udc80" and got["code"] == "UNKNOWN"
    assert got["level"] == "info" and got["timestamp"].endswith("Z")


def test_a_line_that_renders_in_one_step_is_that_line() -> None:
    """The one-step path is kept for what it can write."""
    line = render_access((time.time(), "info", "rpc", _Event(), ("/a.S/Say", "OK"), None,
                          None))
    assert line.endswith('"timestamp":"x"}')
