"""A command whose output cannot be written (stdout on a full disk or quota: ENOSPC,
EDQUOT; a terminal gone: EIO) ends with one line on stderr and status 1, as when stdout
is closed, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshkit.cli import main

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


def _to_dev_full(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-m", "meshkit.cli", *args], env=env,
                              stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=30, check=False)


def test_output_to_a_full_disk_is_one_line_status_1(tmp_path: Path) -> None:
    """``meshkit version > /dev/full`` (and ``--help``, ``certs inspect``)
    ended in an ``OSError: [Errno 28] No space left on device`` traceback (certs
    inspect: a line blaming the file it read)."""
    assert main(["certs", "init", "--dir", str(tmp_path / "certs")]) == 0
    runs = (("version",),
            ("--help",),
            ("certs", "inspect", str(tmp_path / "certs" / "ca.pem")))
    with ThreadPoolExecutor(3) as pool:  # independent commands, run together
        done = list(pool.map(lambda args: _to_dev_full(*args), runs))
    for args, run in zip(runs, done, strict=True):
        assert "Traceback" not in run.stderr, (args, run.stderr)
        assert run.returncode == 1, (args, run.stderr)
        assert run.stderr.splitlines() == [
            "meshkit: stdout cannot be written: No space left on device"], (args, run.stderr)
