"""``meshkit demo`` in a checkout installed without its dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# nats-py made unimportable (as when meshkit is installed `pip install -e .`, without the
# examples extra), then `meshkit demo --help`
_SCRIPT = """
import sys
sys.modules["nats"] = None  # import nats: ModuleNotFoundError, name 'nats'
from meshkit.cli import main
sys.argv = ["meshkit", sys.argv[1], "--help"]
raise SystemExit(main())
"""


def test_a_missing_dependency_is_named_in_one_line() -> None:
    """In a checkout whose environment lacks a dependency of the demo (nats-py: ``pip
    install -e .`` without the examples extra), ``meshkit demo`` took the
    ``ModuleNotFoundError`` for "not in a checkout", put the checkout on ``sys.path``,
    imported again and died with the same error's traceback, exit 1. It now says which
    package is missing and how to install the dependencies: one line, exit 1."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT, "demo"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert (done.returncode, done.stdout) == (1, ""), done.stderr[-800:]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "'nats'" in done.stderr and "pip install" in done.stderr, done.stderr
