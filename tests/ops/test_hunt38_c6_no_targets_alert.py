"""A mesh that vanished from Prometheus must fire an alert.

What a user saw: every alert of deploy/prometheus reads series scraped from the targets
that ``meshkit prometheus-targets`` writes. When that list became empty (the registry
wiped or replaced, a Consul token without ``service:read``, which lists no service and
no error, a targets file deleted) the command wrote ``[]`` and exited 0, Prometheus
dropped every target, and with them every series: ``MeshkitInstanceDown`` (``up == 0``)
had nothing to compare and nothing else could fire. The whole mesh was unmonitored, in
silence. Shown with the real command on an empty registry and ``promtool test rules``
on the shipped rule files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.test_prometheus import REPO, promtool_test
from tests.ops.tools import binary

pytestmark = pytest.mark.timeout(60)

_UP = 'up{job="meshkit",mesh_service="orderd",mesh_instance="o1",instance="10.0.0.7:9464"}'


def test_targets_written_empty_fire_an_alert(tmp_path: Path) -> None:
    """``prometheus-targets`` on a registry that lists nothing writes no target and
    succeeds; once the scraped ``up`` series end, ``MeshkitNoTargets`` fires after its
    ``for``; a mesh still scraped (up 1 or 0) fires nothing of it."""
    binary("promtool")
    out = tmp_path / "targets.json"
    proc = subprocess.run(
        [sys.executable, "-m", "meshkit.cli", "prometheus-targets", "--registry",
         f"local://{tmp_path / 'registry'}", "--out", str(out)],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == []  # Prometheus drops every target
    rc, text = promtool_test(tmp_path, [
        {"interval": "1m",
         # scraped for 10 minutes, then the targets file empties: the series end
         "input_series": [{"series": _UP, "values": "1x10"}],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "MeshkitNoTargets", "exp_alerts": []},
             {"eval_time": "30m", "alertname": "MeshkitNoTargets", "exp_alerts": [{
                 "exp_labels": {"severity": "critical", "job": "meshkit"},
                 "exp_annotations": {"summary": (
                     "Prometheus scrapes no meshkit instance: the targets file is empty "
                     "or gone"),
                     "description": ("Check that `meshkit prometheus-targets --watch` runs "
                                     "and that its registry (and token) lists the "
                                     "services.")}}]}]},
        {"interval": "1m",
         "input_series": [{"series": _UP, "values": "1x20 0x20"}],
         "alert_rule_test": [
             {"eval_time": "40m", "alertname": "MeshkitNoTargets", "exp_alerts": []}]},
    ])
    assert rc == 0, "a mesh gone from Prometheus fires no alert:\n" + text
