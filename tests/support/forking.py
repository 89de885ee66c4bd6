"""Workers forked from one process, each reporting a line of text: the fork runs in a
Python subprocess of its own (the test process has threads a fork would copy).

A test's script builds what the workers inherit and calls :func:`report_from_workers`
with what each worker draws; the test reads the reports with :func:`forked_reports`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])


def report_from_workers(draw: Callable[[], str], workers: int = 3) -> None:
    """In a script: fork ``workers`` children, each writing ``draw()`` to a pipe, and
    print ``worker<n>: <text>`` for each, in order (run by the script, not the test)."""
    children = []
    for _ in range(workers):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, draw().encode())
            os._exit(0)
        os.close(write)
        children.append((pid, read))
    for n, (pid, read) in enumerate(children):
        with os.fdopen(read) as f:
            print(f"worker{n}: {f.read()}", flush=True)
        os.waitpid(pid, 0)


def forked_reports(script: str, *args: str, timeout_s: float = 45.0,
                   workers: int = 3) -> dict[str, str]:
    """Run ``script`` (``python -c``, the repository first on ``sys.path``, ``args`` as
    ``sys.argv[1:]``) and return each worker's report, ``{"worker0": text, ...}``;
    asserts it exited 0 and that every worker reported."""
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {_ROOT!r})\n{script}",
         *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert sorted(lines) == [f"worker{n}" for n in range(workers)], done.stdout + done.stderr
    return lines
