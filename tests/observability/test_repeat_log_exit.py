"""RepeatLog tells at interpreter exit the events it counted but had not told.

A process that ends within a RepeatLog's interval of its last counted events (a
short-lived client, a job) lost their count: the timer that would tell it runs on an
event loop that had ended, and nothing else flushes the module-level logs (the
baggage-cut warning a dialing process keeps), though the class docstring says every
event is told, on a line of its own or in a count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import structlog
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from meshkit._log import RepeatLog
    log = RepeatLog(structlog.get_logger("meshkit.x"), "baggage cut", "baggage cuts",
                    key_fields=())

    async def main() -> None:
        for _ in range(5):
            log.report(())

    asyncio.run(main())
""")


def test_counts_not_yet_told_are_told_at_exit() -> None:
    """Five events in an asyncio.run() and the process ends: one full line and a count
    of four, five events told."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=30, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    told = sum(line.get("count", 1) for line in lines)
    assert told == 5, done.stderr
    assert [line["event"] for line in lines] == ["baggage cut", "baggage cuts"], lines
