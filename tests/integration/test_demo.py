"""The demo itself, on real processes: it passes, and it leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (zombies of reaped children count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def service_logs(workdir: Path) -> dict[str, str]:
    """The service processes' logs a demo run left in ``workdir``, by file name."""
    return {p.name: p.read_text(errors="replace") for p in workdir.glob("*.log")}


async def demo(*args: str) -> asyncio.subprocess.Process:
    """Start ``meshkit demo`` (through the CLI module) with ``args``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", "demo", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


async def test_demo_passes_with_a_killed_instance(tmp_path: Path) -> None:
    """The demo's small workload survives its SIGKILL, reports, and exits 0; no service
    process logs a traceback or a resource it left open (the order service's JWKS client
    once logged "Unclosed client session" at every exit).

    Its durable consumer is made once, at the run's start, and deleted only once
    ``summaryd`` stopped: the events check deleted it while ``summaryd`` still ran, which
    re-created it from the stream's start (``DeliverPolicy.ALL``) and handled every
    event of the run a second time and every earlier run's event of the day (1,800-2,800,
    each refused for its foreign CA and dead-lettered); the printed trace showed two
    ``process`` spans for its one event (JetStream advisories: created, deleted 2 s
    after the start, created again)."""
    import nats

    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2,
                            allow_reconnect=False)
    actions: list[tuple[str, str]] = []

    async def advisory(msg: Any) -> None:
        kind = msg.subject.split(".")[4]  # $JS.EVENT.ADVISORY.CONSUMER.<kind>.<stream>.<name>
        actions.append((kind, msg.subject.rsplit(".", 1)[1]))

    await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.*.ECOM_ORDERS.*", cb=advisory)
    try:
        proc = await demo("--calls", "80", "--concurrency", "4", "--workdir", str(tmp_path))
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        await nc.flush()
    finally:
        await nc.close()
    text = out.decode()
    durable = re.search(r"\(durable (order-summary-[0-9a-f]+)\)", text)
    assert durable is not None, text
    mine = [kind for kind, name in actions if name == durable[1]]
    assert mine == ["CREATED", "DELETED"], (mine, text)
    summaryd = service_logs(tmp_path)["summaryd-1.log"]
    assert "re-creating it" not in summaryd and "dead-letter" not in summaryd, \
        summaryd[-3000:]
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
    # every live process's admin server: userd-1, userd-2, orderd-1, summaryd-1 (orderd-2
    # was killed)
    assert tree.count("/readyz -> 200") == 4, tree
    assert "summaryd-1" in tree.split("Admin servers", 1)[-1], tree
    assert re.search(r"Orders: (\d+) acknowledged, \1 stored, 0 acknowledged but missing, "
                     r"0 idempotency keys stored twice", text), text
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert len(pids) >= 4 and not any(alive(p) for p in pids)
    logs = service_logs(tmp_path)
    assert len(logs) >= 4, sorted(logs)
    for name, log in logs.items():
        for bad in ("Traceback", "Unclosed", "never retrieved", "was never awaited"):
            assert bad not in log, f"{name}: {bad}\n{log[-2000:]}"


def run_printed_commands(lines: list[str]) -> list[tuple[str, int, str]]:
    """Run the printed shell lines exactly as printed, in one shell (as pasted), from the
    checkout, with no MESHKIT_* variable inherited: (line, exit status, output) each."""
    script = []
    for n, line in enumerate(lines):
        script += [f"echo '@@{n}'", line, "echo \"@@rc $?\""]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = subprocess.run("\n".join(script), shell=True, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    out = []
    for n, line in enumerate(lines):
        chunk = proc.stdout.split(f"@@{n}\n", 1)[1].split("@@rc ", 1)
        out.append((line, int(chunk[1].split()[0]), chunk[0]))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("mode", ["mtls", "insecure"])
async def test_keep_running_commands_work_as_printed(mode: str) -> None:
    """With --keep-running the stack stays up and every shell line the demo prints works
    when pasted (services listed, users and orders made through `meshkit call` with the
    token from Authenticate, Prometheus targets written); SIGINT then stops every process
    (run in mTLS and in explicit plaintext mode, which the report says)."""
    proc = await demo("--calls", "20", "--no-kill", "--keep-running",
                      *(["--insecure"] if mode == "insecure" else []))
    assert proc.stdout is not None
    lines: list[str] = []

    async def until_kept() -> None:
        async for raw in proc.stdout:  # type: ignore[union-attr]
            lines.append(raw.decode())
            if lines[-1].startswith("From Python:"):
                return

    try:
        await asyncio.wait_for(until_kept(), 120)
        text = "".join(lines)
        assert "keeps running" in text, text  # else the demo ended early: its output says why
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        assert len(pids) == 5 and all(alive(p) for p in pids), text  # 2 userd, 2 orderd, summaryd
        block = text.split("---8<---\n")[1].splitlines()
        ran = await asyncio.to_thread(run_printed_commands, block)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    for line, rc, out in ran:
        assert rc == 0, f"{line}\nexit {rc}:\n{out}"

    def output(fragment: str) -> str:
        return next(out for line, _, out in ran if fragment in line)

    table = output("meshkit services").splitlines()
    assert table[0].split() == ["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "ADMIN"]
    assert sorted(row.split()[1] for row in table[1:]) == [
        "orderd-1", "orderd-2", "summaryd-1", "userd-1", "userd-2"], table
    assert all(row.split()[3] == "ready" for row in table[1:]), table
    user = json.loads(output("userd/CreateUser"))
    assert user["email"] == "you@example.com"
    session = json.loads(output("SESSION="))
    assert session["user_id"] == user["id"] and session["token"].count(".") == 2
    renamed = json.loads(output("userd/UpdateUser"))  # the edge workload may rename
    assert (renamed["id"], renamed["name"]) == (user["id"], "You Too")
    order = json.loads(output("orderd/PlaceOrder"))
    assert order["user_id"] == user["id"] and order["total_minor"] == "398"
    listed = json.loads(output("orderd/ListOrders"))
    assert [o["id"] for o in listed["orders"]] == [order["id"]]
    targets = json.loads(output("prometheus-targets"))
    assert sorted(t["labels"]["mesh_instance"] for t in targets) == [
        "orderd-1", "orderd-2", "summaryd-1", "userd-1", "userd-2"]
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    text += rest.decode()
    assert "Stopped every process" in text, text
    assert ("PLAINTEXT (--insecure)" in text) == (mode == "insecure")
    assert "[BAD]" not in text
    assert not any(alive(p) for p in pids)
