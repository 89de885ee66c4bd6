"""An exception object logged as a field (``log.warning("db down", error=e)``, the
commonest way to log an error beside ``exc_info``) went out with the password of a URL
its message quotes: the renderers write the exception's ``repr``
(``ValueError('cannot reach redis://:pw@cache:6379/0')``), and the URL redaction read
only ``str``/``bytes`` fields and collections of them. A ``set`` of URL strings too.

Now an exception in a field (or one level deep, as strings are) whose ``repr`` holds a
URL's user info is replaced by that ``repr`` redacted (what the renderers would have
written, less the password); one without is left as it is (same object).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meshkit.observability import redact_secrets

_SECRET = "s3cr/et"


def test_an_exception_field_has_its_url_user_info_redacted() -> None:
    e = ValueError(f"cannot reach redis://:{_SECRET}@cache:6379/0")
    out = redact_secrets(None, "info", {"event": "x", "error": e, "l": [e], "d": {"e": e},
                                        "s": {f"amqp://u:{_SECRET}@mq/"}})
    assert out["error"] == "ValueError('cannot reach redis://[REDACTED]@cache:6379/0')"
    assert out["l"] == [out["error"]]
    assert out["d"] == {"e": out["error"]}
    assert out["s"] == {"amqp://[REDACTED]@mq/"}


def test_an_exception_without_user_info_is_left_as_it_is() -> None:
    e = KeyError("plain")
    out = redact_secrets(None, "info", {"event": "x", "error": e})
    assert out["error"] is e


_PROCESS = f"""
import structlog
from meshkit.observability import configure_logging
import sys
configure_logging("info", json=sys.argv[1] == "json")
e = ConnectionError("cannot reach postgresql://app:{_SECRET}@db:5432/x")
structlog.get_logger("app").warning("db down", error=e)
"""


def test_the_rendered_lines_hold_no_password() -> None:
    for fmt in ("json", "console"):
        proc = subprocess.run([sys.executable, "-c", _PROCESS, fmt], capture_output=True,
                              text=True, timeout=60, check=False,
                              cwd=Path(__file__).parents[2])
        assert proc.returncode == 0, proc.stderr
        assert _SECRET not in proc.stderr, proc.stderr
        assert "postgresql://[REDACTED]@db:5432/x" in proc.stderr, proc.stderr
        if fmt == "json":
            line = json.loads(proc.stderr.strip().splitlines()[-1])
            assert line["error"].startswith("ConnectionError(")
