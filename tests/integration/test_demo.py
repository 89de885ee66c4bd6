"""The demo itself, on real processes: it passes, and it leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (zombies of reaped children count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def demo(*args: str) -> asyncio.subprocess.Process:
    """Start ``meshkit demo`` (through the CLI module) with ``args``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "demo", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


async def test_demo_passes_with_a_killed_instance() -> None:
    """The demo's small workload survives its SIGKILL, reports, and exits 0."""
    proc = await demo("--calls", "80", "--concurrency", "4")
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "SIGKILL orderd-2" in text
    assert "Result: OK" in text
    assert "the projection converged" in text, text  # events: summaries == orders table
    assert "mTLS on every hop" in text and "spiffe://meshkit.local/svc/orderd" in text
    assert text.count("[ok ]") == 7 and "[BAD]" not in text
    # One trace across the client, orderd and userd processes, and live admin servers.
    tree = text.split("One PlaceOrder traced across processes", 1)[1]
    assert "OrderService/PlaceOrder  server" in tree and "UserService/GetUser  server" in tree
    assert "identity=spiffe://meshkit.local/svc/orderd" in tree
    assert tree.count("/readyz -> 200") == 3
    assert re.search(r"Orders: (\d+) acknowledged, \1 stored, 0 acknowledged but missing, "
                     r"0 idempotency keys stored twice", text), text
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert len(pids) >= 4 and not any(alive(p) for p in pids)


async def test_keep_running_then_ctrl_c_stops_every_process() -> None:
    """With --keep-running the stack stays up until SIGINT, then every process is stopped
    (run in explicit plaintext mode, which the report says)."""
    proc = await demo("--calls", "20", "--no-kill", "--keep-running", "--insecure")
    assert proc.stdout is not None
    lines: list[str] = []

    async def until_kept() -> None:
        async for raw in proc.stdout:  # type: ignore[union-attr]
            lines.append(raw.decode())
            if "keeps running" in lines[-1]:
                return

    await asyncio.wait_for(until_kept(), 120)
    text = "".join(lines)
    assert "keeps running" in text, text  # else the demo ended early: its output says why
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert len(pids) == 5 and all(alive(p) for p in pids), text  # 2 userd, 2 orderd, summaryd
    proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    text += rest.decode()
    assert "Stopped every process" in text, text
    assert "PLAINTEXT (--insecure)" in text and "[BAD]" not in text
    assert not any(alive(p) for p in pids)
