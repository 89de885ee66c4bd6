"""``python -m benchmarks.ab`` stops on SIGINT or SIGTERM as the runner does: its worker
processes stopped, status 130 and one line, no traceback. Started from a background job
(SIGINT inherited as ignored) it ran on to its last round, minutes, whatever the signal;
a SIGINT it did get ended it with a KeyboardInterrupt traceback. (A driver cut mid-round
may still print its failed call: the workers are not this test's subject.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_stops_the_ab_and_its_workers(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.ab", "--base", str(REPO), "--rounds", "2000",
         "--calls", "300", "--sessions", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # a background job
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(workers) < 4:
            workers = _children(proc.pid)
            time.sleep(0.1)
        assert len(workers) == 4, workers  # two servers, two drivers
        time.sleep(1.0)  # rounds under way
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after {sig.name}")
        assert proc.returncode == 130, err
        assert "interrupted" in err and "KeyboardInterrupt" not in err, err
        end = time.monotonic() + 20
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], workers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
