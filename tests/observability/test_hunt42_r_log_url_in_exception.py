"""A URL's user info in a logged exception (``log.exception(...)``, ``exc_info=True``, a
standard library record with a traceback) is redacted as in the other fields (6201c58d).

6201c58d redacted every string field, but the traceback is made into the ``exception``
field after the redaction ran (JSON: ``format_exc_info`` follows ``redact_secrets``;
console: the renderer formats it), so an error quoting a connection string
(``ValueError: cannot reach postgresql://app:s3cret@db/x``, SQLAlchemy's "Could not parse
SQLAlchemy URL from string ...") went out with its password, three times in three
lines here, in both formats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_SCRIPT = r"""
import logging, sys
import structlog
from meshkit.observability import configure_logging
configure_logging("info", json=sys.argv[1] == "json")
log = structlog.get_logger("app")
try:
    raise ValueError("cannot reach postgresql://app:s3cret@db/x")
except ValueError:
    log.exception("structlog failed")
    logging.getLogger("app.stdlib").exception("stdlib failed")
    log.error("exc_info", exc_info=True)
"""


@pytest.mark.parametrize("fmt", ["json", "console"], ids=["json", "console"])
def test_a_url_password_in_a_logged_exception_is_redacted(fmt: str) -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, fmt], capture_output=True,
                          text=True, timeout=45, check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stderr, done.stderr
    # the traceback is still there, the URL's host and path kept
    assert done.stderr.count("postgresql://[REDACTED]@db/x") >= 3, done.stderr
    assert done.stderr.count("Traceback (most recent call last)") == 3, done.stderr
