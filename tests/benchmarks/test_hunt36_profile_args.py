"""``python -m benchmarks.profile`` profiles the layers it was asked for, or says why not."""

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


@pytest.mark.parametrize("layers", ["tracng", "p2c,tracng"])
def test_an_unknown_layer_is_refused(layers: str, no_workers: list[tuple[str, ...]],
                                     tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--layers tracng`` profiled the bare mesh (the unknown name was dropped as
    'unavailable' without a word: only the last line's empty layer list showed it)."""
    with pytest.raises(SystemExit) as exc:
        profile.main(["--layers", layers, "--py-spy", __file__, "--out", str(tmp_path)])
    assert exc.value.code == 2 and "'tracng'" in capsys.readouterr().err
    assert no_workers == []


def test_an_unavailable_layer_is_named(no_workers: list[tuple[str, ...]], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A layer that cannot be built here is left out with a note saying so."""
    real = profile.stacks.layer_note
    monkeypatch.setattr(profile.stacks, "layer_note",
                        lambda name, secrets: "no key here" if name == "jwt"
                        else real(name, secrets))
    with pytest.raises(WorkerError):
        profile.main(["--layers", "p2c,jwt", "--py-spy", __file__, "--out", str(tmp_path)])
    assert no_workers == [("p2c",)]
    assert "jwt" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--concurrency", "0"], ["--seconds", "0"],
                                  ["--seconds", "-2"], ["--top", "-1"]])
def test_numbers_that_profile_nothing_are_refused(
        args: list[str], no_workers: list[tuple[str, ...]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--concurrency 0`` profiled two idle processes for the whole run and printed
    '0 QPS, p50 0 us' as the contender's figures; ``--seconds 0`` the same for a
    one-second py-spy run."""
    with pytest.raises(SystemExit) as exc:
        profile.main([*args, "--py-spy", __file__, "--out", str(tmp_path)])
    assert exc.value.code == 2 and args[0] in capsys.readouterr().err
    assert no_workers == []
