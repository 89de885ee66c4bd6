"""A consumer process reads its publishers' trace context and baggage from message
headers with OpenTelemetry's propagators, which warn once per malformed header quoting it;
meshkit bounds those warnings there as on a server (see tests/observability/test_tracing.py).
"""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = r"""
import logging, sys
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("opentelemetry").addHandler(Keep())
logging.getLogger("opentelemetry").setLevel(logging.WARNING)
from meshkit.messaging._telemetry import extract
for _ in range(200):
    extract({"baggage": "x" * 5000})
print(len(lines), max(map(len, lines), default=0))
"""


def test_a_consumer_only_process_bounds_the_warnings_of_malformed_baggage_headers() -> None:
    """A process that only consumes messages (no server, so no server telemetry built)
    read 200 messages whose ``baggage`` header is malformed: OpenTelemetry's propagator
    logged 200 warnings of about 5,000 characters each (the header quoted), a log flood
    fed by whoever publishes. The messaging extraction now bounds them as a server's does:
    one short line per kind per minute."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, longest = map(int, proc.stdout.split())
    assert count <= 2 and longest <= 400, (count, longest)
