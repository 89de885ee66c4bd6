"""The meshkit command: routing, usage errors and the certs subcommand end to end."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import meshkit
from meshkit.cli import main


def test_version_and_usage(capsys: object) -> None:
    """`version` prints the version; no command is a usage error; unknown commands exit 2."""
    assert main(["version"]) == 0
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_certs_init_issue_inspect(tmp_path: Path) -> None:
    """`meshkit certs` creates a CA, issues a workload cert with its SPIFFE ID, keys 0600."""
    d = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(d)]) == 0
    assert main(["certs", "issue", "orderd", "--dir", str(d), "--ttl-h", "2"]) == 0
    key_mode = stat.S_IMODE(os.stat(d / "orderd.key").st_mode)
    assert key_mode == 0o600
    out = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "inspect",
                          str(d / "orderd.pem")], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert "spiffe://meshkit.local/svc/orderd" in out
    assert main(["certs", "issue", "orderd", "--dir", str(d)]) != 0  # no silent overwrite
    assert meshkit.__version__ in subprocess.run(
        [sys.executable, "-m", "meshkit.cli", "version"], capture_output=True, text=True,
        timeout=30, check=True).stdout
