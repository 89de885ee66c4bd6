"""``python -m benchmarks.ab`` checks its numbers before it starts a worker: a count that
runs no call, or no caller, is a usage error, not a worker dying mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import ab

HERE = str(Path(__file__).parents[2])


@pytest.mark.parametrize(("args", "named"), [
    (["--calls", "0"], "--calls"),
    (["--callers", "0"], "--callers"),
    (["--calls", "3", "--callers", "4"], "--callers"),
    (["--rounds", "0"], "--rounds"),
    (["--rounds", "2"], "--sessions"),  # the default 4 sessions need 4 rounds
    (["--sessions", "0"], "--sessions"),
])
def test_numbers_that_run_no_call_are_usage_errors(
        args: list[str], named: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--calls 0`` (or fewer calls than ``--callers``) had each driver answer a round
    of no call: its worker died on the median of nothing (its stderr is /dev/null) and
    the run ended in ``RuntimeError: worker answered []`` after starting every process;
    ``--callers 0`` the same by a ZeroDivisionError; ``--rounds 2`` (fewer than the default
    4 sessions) or ``--sessions 0`` ended in a ValueError traceback."""

    def started(*a: Any, **kw: Any) -> None:
        raise AssertionError("a worker was started")

    monkeypatch.setattr(ab._Proc, "__init__", started)
    with pytest.raises(SystemExit) as exc:
        ab.main(["--base", HERE, *args])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_a_worker_that_never_answers_ends_the_run_in_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of a tree that hangs (here its ``meshkit`` import never returns) held the
    A/B forever: the driver read its first line without a time limit. It now waits
    ``ab.ANSWER_TIMEOUT_S`` at most, kills the worker and names the tree."""
    import subprocess
    import time

    tree = tmp_path / "hung"
    (tree / "meshkit").mkdir(parents=True)
    (tree / "meshkit" / "__init__.py").write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.setattr(ab, "ANSWER_TIMEOUT_S", 1.5)
    procs: list[subprocess.Popen[str]] = []
    real = subprocess.Popen

    def recording(*a: Any, **kw: Any) -> subprocess.Popen[str]:
        p: subprocess.Popen[str] = real(*a, **kw)
        procs.append(p)
        return p

    monkeypatch.setattr(ab.subprocess, "Popen", recording)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="no answer within") as exc:
        ab.run(str(tree), HERE, rounds=1, calls=2, callers=1, sessions=1, warmup_calls=1)
    assert str(tree) in str(exc.value)
    assert time.monotonic() - t0 < 20
    assert procs and all(p.poll() is not None for p in procs)


async def test_a_round_runs_the_calls_asked_for_whatever_the_callers(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """A round of ``--calls 10 --callers 4`` ran 8 calls (``calls // callers`` per
    caller) while the summary said rounds of 10 calls (300 with 7 callers: 294); the
    calls left over now go to the first callers."""
    from benchmarks import _ab_worker

    lines = iter(["10 4\n", "7 7\n", ""])
    calls: list[bytes] = []

    async def line() -> str:
        return next(lines)

    async def call(request: bytes, **kw: Any) -> bytes:  # timeout=5
        calls.append(request)
        return request

    monkeypatch.setattr(_ab_worker, "_line", line)
    monkeypatch.setenv("MESHKIT_AB_WARMUP_CALLS", "0")
    await _ab_worker._drive(call)
    assert len(calls) == 17
    out = capfd.readouterr().out.splitlines()
    assert out[0].startswith("ready") and len(out) == 3
