"""``python -m benchmarks.instructions``: no variant is a usage error, and every variant
gets its ratio to ``raw`` when ``raw`` is measured, wherever it is listed."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import instructions


@pytest.mark.parametrize("args", [["--variants", ""], ["--variants", ","],
                                  ["--variants", "", "--cpu", "1"]])
def test_no_variant_is_refused(args: list[str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--variants ''`` printed the table's header with no row and exited 0 (as
    ``benchmarks.opcodes`` already refused)."""
    monkeypatch.setattr(instructions.shutil, "which", lambda name: "/usr/bin/valgrind")

    def measured(*a: Any, **kw: Any) -> Any:
        raise AssertionError("measured")

    monkeypatch.setattr(instructions, "measure", measured)
    monkeypatch.setattr(instructions, "cpu", measured)
    with pytest.raises(SystemExit) as exc:
        instructions.main(args)
    assert exc.value.code == 2 and "--variants" in capsys.readouterr().err


def test_raw_listed_last_still_gives_every_ratio(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``--variants defaults,bare,raw`` printed no 'vs raw' ratio for defaults and bare:
    the ratio was taken only for variants measured after raw. raw is measured (and
    printed) first now, the others in the order asked for."""
    per_call = {"raw": 500_000.0, "bare": 750_000.0, "defaults": 1_000_000.0}
    order: list[str] = []

    def measure(variant: str, low: int, high: int, callers: int = 1) -> float:
        order.append(variant)
        return per_call[variant]

    monkeypatch.setattr(instructions.shutil, "which", lambda name: "/usr/bin/valgrind")
    monkeypatch.setattr(instructions, "measure", measure)
    assert instructions.main(["--variants", "defaults,bare,raw"]) == 0
    assert order == ["raw", "defaults", "bare"]
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "variant" not in line]
    assert rows == ["| raw | 500,000 | 1.00x |", "| defaults | 1,000,000 | 2.00x |",
                    "| bare | 750,000 | 1.50x |"]
