"""A standard-library warning logged with ``stack_info=True`` lost its stack under
configure_logging(): the bridge from ``logging.lastResort`` (the handler of a record no
handler takes) passed on the message and the exception, not the record's stack, which
the standard library's own last resort writes. Now the JSON line carries it as
``stack`` (a string field: credentials in it redacted as in every other)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import logging
    from meshkit.observability import configure_logging
    configure_logging("INFO", json=True)
    def where_it_was():
        logging.getLogger("lib").warning("slow call password=%s", "s3cret",
                                         stack_info=True)
    where_it_was()
    logging.getLogger("lib").warning("no stack")
""")


def test_a_records_stack_is_kept() -> None:
    """The bridged record's stack is on its line as ``stack``; none when it had none."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=30, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [p["event"] for p in lines] == ["slow call password=[REDACTED]", "no stack"]
    assert "where_it_was" in lines[0]["stack"]
    assert lines[0]["stack"].startswith("Stack (most recent call last):")
    assert "stack" not in lines[1]
