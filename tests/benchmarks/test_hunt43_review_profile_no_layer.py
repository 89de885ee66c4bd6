"""``python -m benchmarks.profile --layers ,`` (or ``''``, a script's unset variable) is a
usage error naming the option and quoting the value, as ``--layers tracng`` is: before, the
empty list passed the unknown-name check and the bare mesh was profiled, with nothing but
the load line's empty layer list to show it (the runner's ``--contenders ,`` fault)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import profile
from benchmarks.procs import WorkerError


@pytest.fixture
def no_workers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record the layers a server would be started with, and start nothing."""
    asked: list[tuple[str, ...]] = []

    async def server(self: Any, name: str, **kw: Any) -> Any:
        asked.append(tuple(kw.get("layers", ())))
        raise WorkerError("not started in this test")

    monkeypatch.setattr(profile.Supervisor, "server", server)
    return asked


@pytest.mark.parametrize("value", ["", ",", ",,"], ids=["empty", "comma", "commas"])
def test_no_layer_is_a_usage_error(value: str, no_workers: list[tuple[str, ...]],
                                   tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        profile.main(["--layers", value, "--py-spy", __file__, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--layers" in err and repr(value) in err, err
    assert no_workers == []


def test_named_layers_still_run(no_workers: list[tuple[str, ...]], tmp_path: Path) -> None:
    with pytest.raises(WorkerError):
        profile.main(["--layers", "p2c,,retry", "--py-spy", __file__, "--out", str(tmp_path)])
    assert no_workers == [("p2c", "retry")]
