"""An empty ``--contenders ''`` or ``--concurrency ''`` (a script's unset variable) is a
usage error naming the option and quoting the value, as ``--contenders ,`` and
``--scenarios ''`` are: before, the empty string read as "option not given" and the mode's
every contender / concurrency ran (a full overhead scenario nobody asked for)."""

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
@pytest.mark.parametrize("option", ["--contenders", "--concurrency"],
                         ids=["contenders", "concurrency"])
def test_an_empty_value_is_a_usage_error(option: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["--smoke", "--scenarios", "overhead", option, "",
                     "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "''" in err, err
    assert list(tmp_path.iterdir()) == []


def test_options_not_given_keep_the_modes_lists() -> None:
    plan = runner._plan(runner._parser().parse_args(["--smoke"]))
    assert plan == runner.PLANS["smoke"]
