"""``meshkit prometheus-targets --out FILE`` into a directory that does not exist (a typo,
an ``emptyDir`` not mounted) named a temporary file the user never gave: "[Errno 2] No such
file or directory: '/dir/.x.json.i8qbln5p'". It now names ``--out`` and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def test_missing_out_directory_names_the_out_file(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "targets.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["MESHKIT_LOCAL_DIR"] = str(tmp_path / "registry")
    proc = subprocess.run(
        [sys.executable, "-m", "meshkit.cli", "prometheus-targets", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 1, proc
    line = proc.stderr.strip()
    assert f"--out {out}" in line, line
    assert "No such file or directory" in line, line
    assert ".targets.json." not in line, line  # not the temporary file's name
