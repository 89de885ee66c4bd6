"""``meshkit certs init|issue|inspect >&-`` (stdout closed): the one line every other
command ends with, ``meshkit: stdout is closed, the output cannot be written``, status 1.

``meshkit certs`` caught the closed stdout's error with its own ``OSError`` handling
(for unreadable files) and printed it as one of those: ``meshkit certs inspect: [Errno 9]
stdout is closed, the output cannot be written``, errno and all; it re-raised only a
broken pipe and a failed write (``StdoutWriteError``). The closed stdout's error is now a
``StdoutWriteError`` too, so it reaches :func:`meshkit.cli.main` as for the others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.auth import init_ca_dir, issue_into_dir

pytestmark = pytest.mark.timeout(60)


def _closed(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    return subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m",
                           "meshkit.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=30, check=False)


@pytest.mark.parametrize("command", ["inspect", "init", "issue"],
                         ids=["inspect", "init", "issue"])
def test_certs_with_stdout_closed_ends_with_the_common_line(
        command: str, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    if command != "init":
        init_ca_dir(certs, trust_domain="meshkit.local")
    if command == "inspect":
        issue_into_dir(certs, "svc")
        args: tuple[str, ...] = ("inspect", str(certs / "svc.pem"))
    elif command == "init":
        args = ("init", "--dir", str(certs))
    else:
        args = ("issue", "svc", "--dir", str(certs))
    done = _closed("certs", *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == ["meshkit: stdout is closed, the output cannot be "
                                        "written"], done.stderr
