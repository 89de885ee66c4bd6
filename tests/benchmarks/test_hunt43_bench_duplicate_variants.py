"""A variant (or stream kind) named twice in ``--variants``/``--kinds`` is measured once,
as ``python -m benchmarks --scenarios`` takes each scenario once: ``streams`` measured the
twice-named variant twice per round and then failed pairing its rounds with the base's
(``zip(..., strict=True)``: a ValueError traceback after every process had run), and
``instructions --cpu`` did the same."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import instructions, opcodes, streams


def test_streams_measures_a_twice_named_variant_once(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[tuple[str, str]] = []

    def fake(variant: str, kind: str, messages: int, n_streams: int,
             bytecodes: bool = False) -> dict[str, Any]:
        asked.append((variant, kind))
        return {"cpu_us": [{"raw": 10.0, "bare": 15.0}[variant]] * n_streams}

    monkeypatch.setattr(streams, "measure", fake)
    assert streams.main(["--variants", "raw,bare,bare", "--kinds", "server,server",
                         "--rounds", "2", "--streams", "1", "--messages", "5"]) == 0
    assert sorted(asked) == [("bare", "server")] * 2 + [("raw", "server")] * 2, asked
    out = capsys.readouterr().out
    assert out.count("| bare |") == 1 and "| bare | 15.0 | 1.50 |" in out, out
    assert out.count("server streams") == 1, out


def test_instructions_cpu_takes_each_variant_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(instructions, "_print_cpu",
                        lambda variants, *a: seen.append(list(variants)))
    assert instructions.main(["--cpu", "1", "--variants", "raw,defaults,raw,defaults"]) == 0
    assert seen == [["raw", "defaults"]], seen


def test_opcodes_takes_each_variant_once(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[str] = []

    def fake(variant: str, *a: Any) -> dict[str, list[float]]:
        asked.append(variant)
        return {"f": [1.0, 1.0]}

    monkeypatch.setattr(opcodes, "count", fake)
    assert opcodes.main(["--variants", "raw,defaults,defaults", "--calls", "10"]) == 0
    assert asked == ["raw", "defaults"], asked
    assert capsys.readouterr().out.count("defaults against raw") == 1
