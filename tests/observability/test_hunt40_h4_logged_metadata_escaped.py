"""A caller's metadata values in the access log's ``md`` are escaped as its method is.

``TelemetryOptions(log_metadata=("x-request-id",))`` writes the values a caller sent. A
gRPC library sends printable ASCII only (meshkit's own client refuses anything else), but
a raw HTTP/2 peer sends any octets and grpc core hands them to the server as they came:
``x-request-id: a\\u202eb`` (a right-to-left override, which reverses what a terminal or
log viewer shows after it), a C1 control such as U+009B (CSI) or U+0085 (NEL), DEL, or
U+2028 (a line separator some log viewers break lines at). The JSON access line escapes
only what RFC 8259 requires (C0 controls, quote, backslash) and wrote those raw, while the
same line writes the method name with such characters escaped (``\\u202e``,
:func:`meshkit._log.printable`). Measured with a raw h2 client against a MeshServer:
``"md":{"x-request-id":"a<U+202E>b"}`` on the line.
"""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._metadata import logged_metadata
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, _logging
from meshkit.observability._logging import _AccessLog
from tests.support.echo import add_echo, method
from tests.support.raw_h2 import grpc_frame, request_headers, unary_call
from tests.support.wait import until

# what a raw peer can put in a text header value that a log reader must not get raw
HOSTILE = {
    "rlo": "a\u202eb",
    "csi": "a\u009b31mb",
    "nel": "a\u0085b",
    "del": "a\x7fb",
    "line-sep": "a\u2028b",
    "esc": "a\x1b[31mb",
    "tab": "a\tb",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_logged_value_has_no_character_that_is_not_printable(name: str) -> None:
    """Every such character comes out escaped as ``repr`` writes it; printable text
    (ASCII, and letters of other scripts) is left as it was."""
    value = HOSTILE[name]
    md = logged_metadata([("x-request-id", value), ("x-other", value)], ("x-request-id",))
    assert md is not None
    shown = md["x-request-id"]
    assert isinstance(shown, str) and shown.isprintable(), shown
    assert shown == value.encode("unicode_escape").decode("ascii").replace("\\\\", "\\")
    assert logged_metadata([("x-request-id", "caf\u00e9 ok")], ("x-request-id",)) == {
        "x-request-id": "caf\u00e9 ok"
    }


def test_values_sent_more_than_once_and_bytes_are_escaped_too() -> None:
    md = logged_metadata(
        [("x-request-id", "a\u202e"), ("x-request-id", b"b\x1b\xff")], ("x-request-id",)
    )
    assert md == {"x-request-id": ["a\\u202e", "b\\x1b\\xff"]}


@pytest.mark.timeout(60)
async def test_the_access_line_of_a_raw_callers_call_shows_the_value_escaped(
    registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """End to end: a raw h2 client sends ``x-request-id`` with a right-to-left override
    and a C1 control; the server's access line (unconfigured logging: JSON through the
    standard library) shows them escaped."""
    monkeypatch.setattr(_AccessLog, "logger", None)
    monkeypatch.setattr(_logging, "_structlog_configured", lambda: False)
    caplog.set_level(logging.INFO, logger="meshkit.access")
    srv = meshkit.MeshServer(
        "echo",
        [add_echo("e1")],
        registry=registry,
        options=meshkit.ServeOptions(
            insecure=True,
            drain_delay_s=0,
            grace_s=1.0,
            telemetry=TelemetryOptions(
                tracing=False, registry=CollectorRegistry(), log_metadata=("x-request-id",)
            ),
        ),
    )
    await srv.start()
    try:
        sent = "id\u202e-7\u009b2J"
        reply = await unary_call(
            srv.port, request_headers(method("Unary"), [("x-request-id", sent)]), grpc_frame(b"x")
        )
        assert reply.get("grpc-status") == "0"

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "meshkit.access"]

        await until(lambda: len(lines()) == 1, timeout_s=10.0)
        line = lines()[0]
        assert "\u202e" not in line and "\u009b" not in line, line
        assert json.loads(line)["md"] == {"x-request-id": "id\\u202e-7\\x9b2J"}
    finally:
        await srv.drain()
