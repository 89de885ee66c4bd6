"""``meshkit prometheus-targets --out`` refused as a FIFO names the path with its control
characters escaped, as the command's other messages do (068f9bf6 printed ``--out`` raw:
an ESC sequence in the name acted on the terminal)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_fifo_named_with_an_escape_is_named_escaped(tmp_path: Path) -> None:
    fifo = tmp_path / "t\x1b[2Jx"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    done = subprocess.run([sys.executable, "-m", "meshkit.cli", "prometheus-targets",
                           "--registry", f"local://{tmp_path / 'reg'}", "--out", str(fifo)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=40,
                          check=False)
    assert done.returncode == 1, done.stderr
    assert b"\x1b" not in done.stderr, done.stderr
    assert b"t\\x1b[2Jx: not a regular file (a FIFO)" in done.stderr, done.stderr
