"""README ("Two commands"): ``make demo`` needs only Python 3.11+ and ``make``. Its events
part needs a NATS JetStream (``MESHKIT_NATS_URL``, default ``nats://127.0.0.1:4222``);
without one the demo waited 30 s for a projection that could never converge and exited 1
("the projection did NOT converge within 30 s"), though every call and every order was
fine. Now it says the events part was skipped, naming the URL, and the exit code is the
rest of the report's."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_without_nats_skips_the_events_part(tmp_path: Path) -> None:
    port = _closed_port()
    url = f"nats://127.0.0.1:{port}"
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("MESHKIT_", "OTEL_"))}
    env["MESHKIT_NATS_URL"] = url
    proc = subprocess.run(
        [sys.executable, "-m", "meshkit.cli", "demo", "--calls", "20", "--concurrency", "4",
         "--workdir", str(tmp_path / "w")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    out = proc.stdout
    assert "Result: OK" in out, out[-3000:] + proc.stderr[-2000:]
    assert "did NOT converge" not in out, out[-3000:]
    assert f"NATS JetStream not reachable at {url}" in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
