"""``meshkit bench --help`` names the command the user ran.

Its usage line (and every usage error) read ``usage: python -m benchmarks ...``, a
command the user had not typed; the results' ``machine.command`` said the same. Run as
``meshkit bench`` it is now ``meshkit bench``; ``python -m benchmarks`` keeps its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import runner

pytestmark = pytest.mark.timeout(120)

_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("command", "prog"), [
    (["-m", "meshkit.cli", "bench"], "meshkit bench"),
    (["-m", "benchmarks"], "python -m benchmarks"),
], ids=["meshkit-bench", "python-m-benchmarks"])
def test_the_usage_names_the_command_run(command: list[str], prog: str) -> None:
    """``--help`` starts ``usage: <prog>``; a bad option's error names it too (exit 2)."""
    done = subprocess.run([sys.executable, *command, "--help"], capture_output=True,
                          text=True, timeout=60, cwd=_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {prog} "), done.stdout[:200]
    bad = subprocess.run([sys.executable, *command, "--no-such-option"],
                         capture_output=True, text=True, timeout=60, cwd=_ROOT)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith(f"usage: {prog} "), bad.stderr[:200]
    assert f"{prog}: error:" in bad.stderr, bad.stderr


def test_the_results_name_the_command_run() -> None:
    """The results document's ``command`` starts with the program name given."""
    assert runner.machine(["--quick"], prog="meshkit bench")["command"] == \
        "meshkit bench --quick"
    assert runner.machine(["--quick"])["command"] == "python -m benchmarks --quick"
