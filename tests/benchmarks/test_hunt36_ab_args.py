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
