"""A scenario that fails, for whatever reason, is reported and the run goes on: the other
scenarios' results are still written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import runner
from benchmarks.scenarios import SCENARIOS
from benchmarks.scenarios._common import Ctx


async def _etcd_never_healthy(ctx: Ctx) -> dict[str, Any]:
    raise RuntimeError("etcd not healthy within 20.0s")


async def _fine(ctx: Ctx) -> dict[str, Any]:
    return {"measured": 1}


def test_a_scenario_raising_runtime_error_is_reported_and_the_run_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The runner caught WorkerError, TimeoutError, OSError, KeyError and ValueError
    only: the convergence scenario's etcd failing to start (RuntimeError) ended the
    whole run in a traceback, the scenarios after it did not run and no JSON was written
    (the minutes of overhead and compare rounds before it lost)."""
    monkeypatch.setitem(SCENARIOS, "hunt36-broken", _etcd_never_healthy)
    monkeypatch.setitem(SCENARIOS, "hunt36-fine", _fine)
    code = runner.main(["--smoke", "--scenarios", "hunt36-broken,hunt36-fine",
                        "--out", str(tmp_path)])
    assert code == 1
    (path,) = tmp_path.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["errors"] == {"hunt36-broken": "RuntimeError: etcd not healthy within 20.0s"}
    assert doc["scenarios"]["hunt36-fine"]["measured"] == 1
    captured = capsys.readouterr()
    assert "FAILED: RuntimeError: etcd not healthy" in captured.out
    assert "scenario hunt36-broken failed" in captured.err
