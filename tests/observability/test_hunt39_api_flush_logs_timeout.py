"""flush_logs(timeout_s) takes seconds >= 0 and ``math.inf`` (wait until the queued lines
are written, as MeshChannel.wait_for_endpoints takes it for no bound): with lines queued
for a reader that had not read yet, ``flush_logs(math.inf)`` raised a bare
``OverflowError: timestamp out of range for platform time_t`` (threading's wait given
inf); ``flush_logs(nan)`` or ``-1`` returned at once without waiting, silently, and
``flush_logs("5")`` raised a bare ``TypeError``. Now a ConfigError quoting the value."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import flush_logs

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("value", ["nan", "negative", "a-string", "true", "none"])
def test_a_timeout_that_is_no_number_of_seconds_is_a_config_error(value: str) -> None:
    bad = {"nan": math.nan, "negative": -1.0, "a-string": "5", "true": True,
           "none": None}[value]
    with pytest.raises(ConfigError) as caught:
        flush_logs(bad)  # type: ignore[arg-type]
    assert "timeout_s" in str(caught.value) and repr(bad) in str(caught.value)


def test_an_infinite_timeout_waits_for_a_slow_reader() -> None:
    """A child whose standard error is a pipe its parent reads only after a pause: lines
    past the pipe's buffer are queued for the writer thread, and flush_logs(math.inf)
    returns once the parent has read them all, the last line included."""
    child = textwrap.dedent("""
        import math, sys, time
        import structlog
        from meshkit.observability import configure_logging, flush_logs
        configure_logging("INFO", json=True)
        log = structlog.get_logger("h4")
        for i in range(400):
            log.info("line", i=i, pad="x" * 400)
        sys.stdout.write("logged\\n"); sys.stdout.flush()
        flush_logs(math.inf)
        sys.stdout.write("flushed\\n"); sys.stdout.flush()
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "logged"
        time.sleep(1.0)  # the child's flush_logs finds lines queued for this reader
        err = proc.stderr.read()  # reads on until the child exits
        out = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "flushed" in out
    assert '"i": 399' in err or '"i":399' in err, err[-500:]
    assert "OverflowError" not in err
