"""``benchmarks.ab`` interrupted while a worker starts (SIGINT/SIGTERM raise
KeyboardInterrupt in the wait for its ``ready`` line, which can take seconds: imports,
warm-up) stops that worker too. Before (3e3a0631's handlers), ``_Proc.__init__`` stopped a
starting worker only on RuntimeError (no answer in time); an interrupt skipped it, and as
the worker was not yet in ``_session``'s list its ``finally`` did not stop it either: ab
printed 'interrupted; every worker process was stopped' and exited 130 with that worker
still running (a server worker serves until its stdin closes)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from benchmarks import ab


@pytest.mark.timeout(120)
def test_an_interrupt_while_a_worker_starts_stops_it(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Any) -> None:
    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kw: Any) -> subprocess.Popen[str]:
        p: subprocess.Popen[str] = real_popen(*args, **kw)
        started.append(p)
        return p

    def interrupted(self: Any) -> str:
        raise KeyboardInterrupt  # the signal, arriving while it waits for 'ready'

    monkeypatch.setattr(ab.subprocess, "Popen", popen)
    monkeypatch.setattr(ab._Proc, "read", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            ab._Proc(ab._HERE, "server", "defaults", str(tmp_path / "registry"))
        assert len(started) == 1
        assert started[0].poll() is not None, "the starting worker was left running"
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait(30)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
