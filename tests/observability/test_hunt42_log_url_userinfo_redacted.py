"""A log field holding a URL with a password in it (``dsn="postgresql://app:s3cret@db/x"``,
``DATABASE_URL``, a Redis or AMQP URI, a git URL with a token as its user) went to the
log as it was: redaction read field *names* only (``password``, ``token``...), and a
``dsn`` or ``url`` is no such name. Under ``configure_logging()`` the user info of every
URL in a string field (the event's text too) is now ``[REDACTED]``, the rest of the URL
kept for debugging; meshkit's own access-log fields are not passed through it (no
per-call cost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.observability import redact_secrets

_PROCESS = r"""
import logging, structlog
from meshkit.observability import configure_logging
configure_logging("info", json=True)
log = structlog.get_logger("app")
log.info("connecting to postgresql://app:s3cret@db:5432/orders",
         dsn="postgresql://app:s3cret@db:5432/orders?sslmode=require",
         broker="amqp://guest:gu3st-pw@rabbit:5672/%2F",
         repo="https://ghp_t0ken@github.com/acme/x.git",
         plain="a@b.c and https://example.com/x?q=1", n=3)
logging.getLogger("app.stdlib").warning("cache at redis://:r3dis-pw@cache:6379/0")
"""


def test_url_passwords_in_log_fields_are_redacted() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROCESS], capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    for secret in ("s3cret", "gu3st-pw", "ghp_t0ken", "r3dis-pw"):
        assert secret not in proc.stderr, proc.stderr
    lines = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    app = next(ln for ln in lines if ln.get("dsn"))
    assert app["dsn"] == "postgresql://[REDACTED]@db:5432/orders?sslmode=require"
    assert app["event"] == "connecting to postgresql://[REDACTED]@db:5432/orders"
    assert app["broker"] == "amqp://[REDACTED]@rabbit:5672/%2F"
    assert app["repo"] == "https://[REDACTED]@github.com/acme/x.git"
    assert app["plain"] == "a@b.c and https://example.com/x?q=1"  # no user info: as is
    assert app["n"] == 3
    assert "cache at redis://[REDACTED]@cache:6379/0" in proc.stderr


@pytest.mark.parametrize(("value", "shown"), [
    ("mysql://u:p@h/db", "mysql://[REDACTED]@h/db"),
    ("see http://u@h/ and ftp://x:y@z/", "see http://[REDACTED]@h/ and ftp://[REDACTED]@z/"),
    ("mailto:a@b.c", "mailto:a@b.c"),  # no authority: no user info
    ("https://h/p@q", "https://h/p@q"),  # '@' in the path, not user info
    ("nats://tok@n1:4222,nats://tok@n2:4222", "nats://[REDACTED]@n1:4222,nats://[REDACTED]@n2:4222"),
], ids=["password", "two-urls", "mailto", "at-in-path", "nats-list"])
def test_redact_secrets_masks_url_user_info(value: str, shown: str) -> None:
    assert redact_secrets(None, "info", {"event": "e", "v": value})["v"] == shown
