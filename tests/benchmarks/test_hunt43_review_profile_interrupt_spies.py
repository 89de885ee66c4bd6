"""``python -m benchmarks.profile`` interrupted (SIGINT, even inherited as ignored, or
SIGTERM) while its py-spy recorders run stops them too and ends with its one line: before
(a8a456d2's handlers, tested with a py-spy that had already exited), the recorders were
left running with no one to wait for them, and their pipe transports, collected after
the event loop had closed, printed 'Loop ... that handles pid ... is closed' and an
'Exception ignored ... RuntimeError: Event loop is closed' traceback after the
'interrupted' line. A stand-in recorder that sleeps (a real one ends once its target
worker is gone) shows both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_stops_the_recorders_quietly(sig: signal.Signals, tmp_path: Path) -> None:
    spies = tmp_path / "spies"
    fake = tmp_path / "py-spy"
    fake.write_text(f"#!/bin/sh\necho $$ >> {spies}\nexec sleep 150\n")
    fake.chmod(0o755)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.profile", "--layers", "raw", "--concurrency", "2",
         "--seconds", "120", "--py-spy", str(fake), "--out", str(tmp_path / "out")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # a background job
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(pids) < 2:
            pids = _pids(spies)
            time.sleep(0.1)
        assert len(pids) == 2, pids  # both recorders running
        time.sleep(0.5)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after {sig.name}")
        assert proc.returncode == 130, err
        assert "interrupted; every worker process was stopped" in err, err
        for noise in ("Traceback", "Exception ignored", "is closed"):
            assert noise not in err, err
        assert not [p for p in pids if _alive(p)], pids  # not left for 150 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
