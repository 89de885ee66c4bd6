"""Every ``deploy/...`` path the deploy files and the README name exists.

The three Deployments' comments sent readers who scrape by Kubernetes discovery to
``deploy/prometheus/kubernetes.yml``, which was never shipped (deploy/k8s/README.md says
why: Debian's Prometheus has no Kubernetes discovery to check it with)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_PATH = re.compile(r"deploy/[A-Za-z0-9_./-]*[A-Za-z0-9_/-]")


def test_every_named_deploy_path_exists() -> None:
    sources = [REPO / "README.md", *(p for p in (REPO / "deploy").rglob("*") if p.is_file())]
    missing = {(str(src.relative_to(REPO)), name)
               for src in sources for name in _PATH.findall(src.read_text(errors="replace"))
               if not (REPO / name).exists()}
    assert not missing, sorted(missing)
