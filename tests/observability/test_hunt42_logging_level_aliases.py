"""``MESHKIT_LOG_LEVEL=warn`` (and ``configure_logging("warn")``, ``"fatal"``) is the level
the standard library's ``logging`` and structlog both take under that name (``WARN`` is
``WARNING``, ``FATAL`` is ``CRITICAL``; the spelling Envoy, Go's and Rust's loggers and
most deployment templates use). Before, ``configure_logging`` refused it with a
``ConfigError``, so a service whose environment said ``warn`` did not start. An unknown
name is still refused, quoted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import configure_logging

pytestmark = pytest.mark.timeout(60)

_SCRIPT = """
import os, sys
import structlog
from meshkit.observability import configure_logging
arg = sys.argv[1]
configure_logging(None if arg == "-" else arg, json=True)
log = structlog.get_logger("hunt42")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e"); log.critical("c")
"""


def _events(level_arg: str, env_level: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_LOG")}
    if env_level is not None:
        env["MESHKIT_LOG_LEVEL"] = env_level
    done = subprocess.run([sys.executable, "-c", _SCRIPT, level_arg], env=env,
                          capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["event"] for line in done.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(("level_arg", "env_level", "events"), [
    ("-", "warn", ["w", "e", "c"]),
    ("-", " Warn ", ["w", "e", "c"]),
    ("-", "fatal", ["c"]),
    ("warn", None, ["w", "e", "c"]),
    ("FATAL", None, ["c"]),
    ("-", "warning", ["w", "e", "c"]),
], ids=["env-warn", "env-blank-case", "env-fatal", "arg-warn", "arg-fatal", "env-warning"])
def test_the_standard_aliases_are_levels(level_arg: str, env_level: str | None,
                                         events: list[str]) -> None:
    assert _events(level_arg, env_level) == events


@pytest.mark.parametrize("bad", ["loud", "warnings", "trace"], ids=["loud", "warnings", "trace"])
def test_an_unknown_level_is_still_refused_quoted(bad: str) -> None:
    with pytest.raises(ConfigError, match=repr(bad)):
        configure_logging(bad)
