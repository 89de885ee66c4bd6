"""deploy/k8s/README.md's certificate commands, run as written, give the pods
certificates that last long enough to be renewed by hand.

The README issued each workload's certificate with ``meshkit certs issue $s`` and
meshkit's default lifetime, 24 h, with the CA key kept off the cluster and nothing in
the cluster to renew them: an operator who followed it had every mTLS hop fail a day
later (``MeshkitCertificateExpiringSoon`` firing from hour 16)."""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.auth import load_certificate

REPO = Path(__file__).resolve().parents[2]
MESHKIT = Path(sys.executable).with_name("meshkit")

pytestmark = pytest.mark.timeout(60)


def _commands(pattern: str) -> list[str]:
    text = (REPO / "deploy" / "k8s" / "README.md").read_text()
    return [line.strip().split("  #")[0] for line in text.splitlines()
            if re.match(pattern, line.strip())]


def test_the_readme_issues_certificates_of_a_week_or_more(tmp_path: Path) -> None:
    (init,) = _commands(r"meshkit certs init\b")
    (issue,) = _commands(r"meshkit certs issue\b")
    for command in (init, issue.replace("$s", "orderd")):
        argv = shlex.split(command)
        subprocess.run([str(MESHKIT), *argv[1:]], cwd=tmp_path, check=True,
                       capture_output=True, timeout=30)
    cert = load_certificate(tmp_path / "certs" / "orderd.pem")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime >= dt.timedelta(days=7), lifetime
