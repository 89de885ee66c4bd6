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


def test_markdown_into_a_new_directory_is_written(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--markdown results/tables.md`` with no ``results/`` yet ran every scenario and
    then failed with FileNotFoundError (a traceback, exit 1), the tables lost; ``--out``
    makes its directory, and so does ``--markdown`` now."""
    monkeypatch.setitem(SCENARIOS, "hunt36-fine", _fine)
    md = tmp_path / "new" / "dir" / "tables.md"
    assert runner.main(["--smoke", "--scenarios", "hunt36-fine", "--out", str(tmp_path),
                        "--markdown", str(md)]) == 0
    assert "### Targets" in md.read_text()


def test_an_unwritable_markdown_path_is_refused_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A ``--markdown`` path that cannot be written (here its parent is a file) is a
    usage error before any scenario runs, not a traceback after all of them."""
    ran: list[str] = []

    async def scenario(ctx: Ctx) -> dict[str, Any]:
        ran.append("ran")
        return {}

    monkeypatch.setitem(SCENARIOS, "hunt36-fine", scenario)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", "--scenarios", "hunt36-fine", "--out", str(tmp_path),
                     "--markdown", str(tmp_path / "file" / "tables.md")])
    assert exc.value.code == 2 and "--markdown" in capsys.readouterr().err and ran == []


def test_a_scenario_named_twice_runs_once(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``--scenarios overhead,compare,overhead`` ran the overhead scenario twice (minutes
    on a full run), the second run's results replacing the first's in the JSON."""
    ran: list[str] = []

    async def scenario(ctx: Ctx) -> dict[str, Any]:
        ran.append("x")
        return {}

    monkeypatch.setitem(SCENARIOS, "hunt36-fine", scenario)
    monkeypatch.setitem(SCENARIOS, "hunt36-other", _fine)
    assert runner.main(["--smoke", "--scenarios", "hunt36-fine,hunt36-other,hunt36-fine",
                        "--out", str(tmp_path)]) == 0
    assert ran == ["x"]


def test_an_unwritable_out_directory_is_refused_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An ``--out`` that cannot be made (here under a file) failed only once every
    scenario had run, in a traceback, the results lost: it is now made first."""
    ran: list[str] = []

    async def scenario(ctx: Ctx) -> dict[str, Any]:
        ran.append("ran")
        return {}

    monkeypatch.setitem(SCENARIOS, "hunt36-fine", scenario)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", "--scenarios", "hunt36-fine",
                     "--out", str(tmp_path / "file" / "results")])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err and ran == []
