"""``meshkit.cli.main`` called in-process, from two threads at once, keeps stdout's
escaping for as long as either runs and restores the caller's handler after both.

d11fa7c6 made ``main`` reconfigure stdout to ``backslashreplace`` and restore the
handler it found when it returns. Two calls overlapping (a program or a test harness
running commands in threads) each saved and restored on its own: the first to end
restored ``strict`` under the second, whose next ``é`` ended in the
``UnicodeEncodeError`` traceback the change was made to prevent, and the second, ending
last, left the caller's stdout on ``backslashreplace`` for good (it had saved that as
the handler it found), and ``sys.stdout`` on the first call's wrapper (the stdout the
second had found). Calls on a stdout that cannot be reconfigured (``StringIO``)
touch nothing.
"""

from __future__ import annotations

import io
import sys
import threading

import pytest

import meshkit.cli as cli

pytestmark = pytest.mark.timeout(60)


def test_overlapping_calls_keep_and_then_restore_the_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # set here, not in a fixture: pytest's capture sets sys.stdout again after set-up
    ascii_stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", ascii_stdout)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def dispatch(argv: list[str]) -> int:
        if argv == ["a"]:
            a_in.set()
            assert b_in.wait(20)
            print("a: zo\u00e9")
        else:
            b_in.set()
            assert a_out.wait(20)
            print("b: zo\u00e9")  # after a has returned
        return 0

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = cli.main([name])
        except BaseException as exc:
            results[name] = exc
        finally:
            if name == "a":
                a_out.set()

    ta = threading.Thread(target=run, args=("a",))
    ta.start()
    assert a_in.wait(20)
    tb = threading.Thread(target=run, args=("b",))
    tb.start()
    ta.join(30)
    tb.join(30)
    assert results == {"a": 0, "b": 0}, results
    assert ascii_stdout.errors == "strict"
    assert sys.stdout is ascii_stdout, sys.stdout  # not the first call's wrapper
    ascii_stdout.flush()
    assert ascii_stdout.buffer.getvalue().count(b"zo\\xe9") == 2  # type: ignore[attr-defined]


def test_a_stringio_stdout_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(cli, "_dispatch", lambda argv: print("zo\u00e9") or 0)
    assert cli.main(["x"]) == 0
    assert sys.stdout is stream and stream.getvalue() == "zo\u00e9\n"
