"""The runner's arguments are checked before any worker starts: a mistyped contender or a
concurrency that drives no call is a usage error, not a run measuring something else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import runner


@pytest.fixture
def no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the runner gets as far as starting a worker process."""

    async def spawn(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(runner.Supervisor, "_spawn", spawn)


@pytest.mark.usefixtures("no_workers")
@pytest.mark.parametrize("contenders", ["raw,+tracng", "ful", "raw,full,nope"])
def test_an_unknown_contender_is_refused(contenders: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``--contenders raw,+tracng`` ran ``raw`` alone and reported it as a finished run
    (exit 0): the unknown name was dropped without a word."""
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", "--scenarios", "overhead", "--contenders", contenders,
                     "--out", str(tmp_path)])
    assert exc.value.code == 2  # a usage error, as argparse's own
    err = capsys.readouterr().err
    bad = [c for c in contenders.split(",") if c not in ("raw", "full")]
    assert all(repr(b) in err for b in bad), err
    assert "+tracing" in err  # the choices are listed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_workers")
@pytest.mark.parametrize("concurrency", ["0", "1,-4", ",", "32,0"])
def test_a_concurrency_below_one_is_refused(concurrency: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--concurrency 0`` ran rounds of no call (QPS 0, a ratio of 0.000x) and ``,`` a
    scenario without a table; both exited 0."""
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", "--scenarios", "overhead", "--concurrency", concurrency,
                     "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--concurrency" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_refused_loop_leaves_no_work_directory(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """``--loop uvloop`` without uvloop returned 2 after the work directory was made, and
    left it behind (a ``meshkit-bench-*`` directory in the temporary directory per try)."""
    import tempfile

    import meshkit

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(meshkit, "uvloop_installed", lambda: False)
    assert runner.main(["--smoke", "--loop", "uvloop", "--out", str(tmp_path / "out")]) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_workers")
@pytest.mark.parametrize("scenarios", ["", ",", " , "])
def test_no_scenario_is_refused(scenarios: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--scenarios ''`` (an unset shell variable) ran nothing, wrote a results file
    with no scenario and every target 'not measured', and exited 0."""
    with pytest.raises(SystemExit) as exc:
        runner.main(["--scenarios", scenarios, "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--scenarios" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_contender_names_are_those_the_overhead_scenario_builds(tmp_path: Path) -> None:
    """``--contenders`` is checked against ``overhead.CONTENDERS``: every contender the
    scenario can build is in it (else naming it would be refused), and nothing else."""
    from benchmarks import stacks
    from benchmarks.scenarios import overhead
    from benchmarks.scenarios._common import PLANS, Ctx

    secrets = stacks.Secrets(tmp_path / "secrets")
    secrets.create()
    ctx = Ctx(plan=PLANS["full"], sup=None, secrets=secrets,  # type: ignore[arg-type]
              workdir=tmp_path)
    built = [s[0] for s in overhead.contender_specs(ctx, subset=False)]
    assert set(built) <= set(overhead.CONTENDERS)
    if not ctx.notes:  # every layer available here: every name is built
        assert sorted(built) == sorted(overhead.CONTENDERS)
