"""``--contenders`` and ``--concurrency`` of ``python -m benchmarks`` as ``--scenarios``:
an empty list is a usage error naming the option and quoting the value (``--contenders
,`` ran ``raw`` alone, a run measuring nothing it was asked for), and a concurrency named
twice runs once (``--concurrency 32,32`` ran every round at 32 twice and kept the second)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import runner


@pytest.fixture
def no_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    async def spawn(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(runner.Supervisor, "_spawn", spawn)


@pytest.mark.usefixtures("no_workers")
@pytest.mark.parametrize("value", [",", " , "], ids=["comma", "blank"])
def test_no_contender_is_a_usage_error(value: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", "--scenarios", "overhead", "--contenders", value,
                     "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--contenders" in err and repr(value) in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_concurrency_named_twice_runs_once() -> None:
    args = runner._parser().parse_args(["--smoke", "--concurrency", "32,1,32"])
    plan = runner._plan(args)
    assert plan.concurrencies == (32, 1), plan.concurrencies
