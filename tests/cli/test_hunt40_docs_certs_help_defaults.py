"""``meshkit certs init --help`` and ``issue --help`` showed ``--dir DIR`` and
``--trust-domain TRUST_DOMAIN`` with no text: where the CA and the workload files go
(``$MESHKIT_CERT_DIR``, else ``./certs``) and the trust domain's default
(``meshkit.local``) were only in ``meshkit certs --help``'s description, the module
docstring, which ``python -OO`` (a mode the README says every command runs under) drops:
there ``meshkit certs --help`` is 10 lines instead of 38. Each option now says its
default in its own help, with or without docstrings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _help(*args: str, optimize: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MESHKIT_CERT_DIR"}
    done = subprocess.run(
        [
            sys.executable,
            *(["-OO"] if optimize else []),
            "-m",
            "meshkit.cli",
            "certs",
            *args,
            "--help",
        ],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "OO"])
def test_each_option_says_its_default(optimize: bool) -> None:
    init = _help("init", optimize=optimize)
    issue = _help("issue", optimize=optimize)
    for text in (init, issue):
        assert re.search(r"--dir DIR [^-]*\(default \$MESHKIT_CERT_DIR, else \./certs\)", text), (
            text
        )
    assert re.search(r"--trust-domain TRUST_DOMAIN [^-]*\(default meshkit\.local\)", init), init
    assert re.search(r"positional arguments: service \w", issue), issue
    assert re.search(r"positional arguments: file \w", _help("inspect", optimize=optimize))
