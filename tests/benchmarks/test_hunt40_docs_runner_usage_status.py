"""A bad argument to ``python -m benchmarks`` / ``meshkit bench`` is a usage error, status
2, as argparse's own errors are and as every other benchmark module
(``benchmarks.layers``, ``.profile``, ``.instructions``, ``.streams``, ``.ab``) and every
``meshkit`` command answer one. The runner's own checks (an unknown scenario or
contender, a concurrency, ``--rounds`` or ``--sessions`` below 1) raised
``SystemExit(message)``, status 1: what benchmarks/README.md gives as "a scenario failed
to run", so a script could not tell a typo from a failed run; and they ran after
``--out`` had been made, leaving a new empty results directory behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import runner

REPO = Path(__file__).resolve().parents[2]

BAD = {
    "unknown-scenario": ["--scenarios", "overhed"],
    "unknown-contender": ["--scenarios", "overhead", "--contenders", "raw,+tracng"],
    "concurrency-0": ["--scenarios", "overhead", "--concurrency", "0"],
    "rounds-0": ["--rounds", "0"],
    "sessions-0": ["--sessions", "0"],
}


@pytest.fixture
def no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the runner gets as far as starting a worker process."""

    async def spawn(*args: object, **kw: object) -> object:
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(runner.Supervisor, "_spawn", spawn)


@pytest.mark.usefixtures("no_workers")
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_argument_is_a_usage_error(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", *BAD[case], "--out", str(out)], prog="meshkit bench")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: meshkit bench"), err
    assert f"meshkit bench: error: {BAD[case][-2]}" in err, err
    assert not out.exists()  # refused before anything is made


def test_python_m_benchmarks_exits_2_on_a_bad_argument(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--scenarios",
            "overhed",
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "python -m benchmarks: error: --scenarios: unknown ['overhed']" in done.stderr
    assert done.stdout == ""
