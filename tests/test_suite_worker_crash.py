"""The suite's own command (`make test`) ends when a test worker dies.

pytest-xdist 3.8 with ``--dist loadfile`` can wait for good after it replaces a crashed
worker (pytest-xdist issues #784, #1323, #1378): the replacement is handed an empty work unit
and every worker parks idle. A clean-clone CI run hung this way once, after a worker died of a
segfault inside CPython 3.11.7 while formatting a failed test's traceback. The Makefile's test
recipe therefore turns worker restarts off, so a crash fails the run at once and names the test
the worker died on. This test runs the recipe's own pytest options over two tiny files, one of
which kills its worker, and asserts the run ends, red, naming that test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recipe_options() -> list[str]:
    """The options after ``pytest`` on the Makefile test recipe's pytest line, make variables
    (``$(PYTEST_ARGS)``, ``$(TEST_WORKERS)``) dropped."""
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ntest:", 1)[1]
    line = next(row for row in recipe.splitlines() if "-m pytest" in row)
    options = shlex.split(line.split("-m pytest", 1)[1])
    kept: list[str] = []
    skip_value = False
    for option in options:
        if skip_value:
            skip_value = False
            continue
        if option == "-n":
            skip_value = True  # the worker count: this test chooses one worker
            continue
        if "$(" in option:
            continue
        kept.append(option)
    return kept


def test_the_test_recipe_fails_fast_when_a_worker_dies(tmp_path: Path) -> None:
    (tmp_path / "test_1_kill.py").write_text(
        "import os, signal\n\ndef test_dies():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    (tmp_path / "test_2_ok.py").write_text("def test_ok():\n    pass\n")
    options = _recipe_options()
    assert "--dist" in options, options
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-n", "1", *options,
             "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
             "test_1_kill.py", "test_2_ok.py"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
        )
    except subprocess.TimeoutExpired as exc:  # the fault: a replaced worker waits for good
        raise AssertionError(
            "the test recipe's pytest run hung after a worker crash"
        ) from exc
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert re.search(r"crashed while running '?test_1_kill\.py::test_dies", out), out
