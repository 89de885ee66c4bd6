"""Under configure_logging(), standard-library warnings that no handler takes come out as
the other lines do (JSON with level, timestamp and the logger's name), not as bare text.

The OpenTelemetry propagators' warnings (which meshkit bounds), its exporters' and
meshkit.fork's go through the standard library's ``logging``; with no handler configured
they went to ``logging.lastResort``, which writes the message alone: a line of plain text
without level or time in a JSON log stream, which a JSON log pipeline cannot parse.
Handlers the application configures still take them (``logging.basicConfig``, before or
after), and once the application configures structlog itself the standard library's own
last resort does again (never stdout, where structlog's defaults print).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import logging, structlog
    from meshkit.observability import configure_logging
    configure_logging("INFO", json=True)
    logging.getLogger("opentelemetry.baggage.propagation").warning(
        "Invalid baggage entry: %r", "k=\\\\x01v")
    logging.getLogger("meshkit.fork").warning("could not reset a X in a forked child")
    logging.getLogger("lib").info("below the standard library's last resort level")
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("lib").exception("boom")
    configure_logging("INFO", json=True)  # again: one bridge, no line twice
    logging.getLogger("lib").warning("after a second configure_logging")
    # structlog configured again by the application (its lines handed to the standard
    # library; its defaults, which print to stdout): the standard library's own last
    # resort again, on stderr, each line once
    structlog.configure(logger_factory=structlog.stdlib.LoggerFactory())
    logging.getLogger("lib").warning("through the stdlib factory")
    structlog.reset_defaults()
    logging.getLogger("lib").warning("structlog reset")
    logging.basicConfig(format="APP %(name)s %(message)s")
    logging.getLogger("lib").warning("the application's handler")
""")


def test_unhandled_standard_library_warnings_are_structured_lines() -> None:
    """Every warning a JSON line with its logger, level and timestamp; the traceback in
    ``exception``; the application's handler takes over once configured."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-3:] == ["through the stdlib factory", "structlog reset",
                          "APP lib the application's handler"], lines
    parsed = [json.loads(line) for line in lines[:-3]]  # every other line is JSON
    assert [(p["logger"], p["level"], p["event"]) for p in parsed] == [
        ("opentelemetry.baggage.propagation", "warning",
         "Invalid baggage entry: 'k=\\\\x01v'"),
        ("meshkit.fork", "warning", "could not reset a X in a forked child"),
        ("lib", "error", "boom"),
        ("lib", "warning", "after a second configure_logging"),
    ]
    assert all("timestamp" in p for p in parsed)
    assert "ZeroDivisionError" in parsed[2]["exception"]
