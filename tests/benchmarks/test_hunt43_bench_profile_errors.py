"""``python -m benchmarks.profile`` says how many calls of its load failed: a stack whose
calls all failed printed "0 QPS, p50 0 us" (the p50 of no call, as fast as it gets) and
a profile of its refusals, with no word of an error."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from benchmarks import profile


class _Worker:
    pid = 1
    port = 1

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    async def request(self, cmd: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        return self.answer if cmd.get("op") == "load" else {"ok": True}


class _Sup:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    async def server(self, *a: Any, **kw: Any) -> _Worker:
        return _Worker({})

    async def client(self, *a: Any, **kw: Any) -> _Worker:
        return _Worker(self.answer)


@pytest.mark.timeout(60)
def test_failed_calls_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"qps": 0.0, "p50_us": 0.0, "calls": 5000, "ok": 0,
              "errors": {"UNAUTHENTICATED": 4990, "UNAVAILABLE": 10}}
    args = argparse.Namespace(layers="raw", concurrency=4, seconds=0.1, top=5,
                              out=tmp_path / "out", py_spy="/bin/true")
    asyncio.run(profile._run(args, tmp_path, _Sup(answer)))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("layers:"))
    assert "5,000 of 5,000 calls failed (UNAUTHENTICATED 4,990, UNAVAILABLE 10)" in line, out
    assert "p50 0 us" not in line, line


@pytest.mark.timeout(60)
def test_a_clean_load_says_no_failure(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"qps": 1234.0, "p50_us": 456.0, "calls": 800, "ok": 800, "errors": {}}
    args = argparse.Namespace(layers="raw", concurrency=4, seconds=0.1, top=5,
                              out=tmp_path / "out", py_spy="/bin/true")
    asyncio.run(profile._run(args, tmp_path, _Sup(answer)))  # type: ignore[arg-type]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("layers:"))
    assert "1234 QPS, p50 456 us" in line and "failed" not in line, line
