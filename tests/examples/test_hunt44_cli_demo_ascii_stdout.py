"""``python -m examples.ecom.demo`` runs on an ASCII stdout.

Its report prints an em dash (``Result: OK — every call succeeded``): run directly with
``PYTHONIOENCODING=ascii`` (or an ASCII locale) it ended in a ``UnicodeEncodeError``
traceback once its work was done (exit 1); ``meshkit demo`` had its stdout escaped by
``meshkit.cli``, the module's own ``main`` did not. It now escapes what stdout cannot
encode (``\\u2014``) and puts the stream's handler back when it returns.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from examples.ecom import demo


async def _report(args: argparse.Namespace) -> int:
    """A stand-in for the run: the report's last line."""
    print("Result: OK \u2014 every call succeeded.")
    return 0


def test_main_prints_its_report_on_an_ascii_stdout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dash is escaped (exit 0, no UnicodeEncodeError); the handler is restored."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(demo, "run_until_terminated", _report)
    code = demo.main(["--workdir", str(tmp_path)])
    out.flush()
    assert code == 0
    assert raw.getvalue() == b"Result: OK \\u2014 every call succeeded.\n"
    assert out.errors == "strict"


def test_a_stdout_that_cannot_be_reconfigured_is_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A StringIO stdout (no reconfigure) takes the report as it is."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(demo, "run_until_terminated", _report)
    assert demo.main(["--workdir", str(tmp_path)]) == 0
    assert out.getvalue() == "Result: OK \u2014 every call succeeded.\n"
