"""The demo (examples/ecom/demo.py, ``meshkit demo``) as a process, stopped by a signal
while it starts its stack: whatever it started is stopped. The whole run on real
processes is tests/integration/test_demo.py."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch import launched
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


def processes_naming(text: str) -> list[int]:
    """The live processes (zombies left out) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if text not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            if (entry / "stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
                continue
            found.append(int(entry.name))
    return found


def left_behind(workdir: str) -> tuple[list[int], bool]:
    """The processes naming ``workdir`` still running, and whether it still exists."""
    return processes_naming(workdir), Path(workdir).exists()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
async def _start_demo(tmp_path: Path, *, block_sigterm: bool = False
                      ) -> tuple[asyncio.subprocess.Process, str]:
    """``meshkit demo --insecure --no-kill`` with TMPDIR ``tmp_path``, no ``MESHKIT_*``,
    in a session of its own, SIGTERM blocked by a launcher before its exec if
    ``block_sigterm`` (:func:`tests.support.launch.launched`); (the process, its
    workdir, read from its first line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["TMPDIR"] = str(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        *launched(sys.executable, "-m", "meshkit.cli", "demo", "--insecure", "--no-kill",
                  block_sigterm=block_sigterm),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "local registry in " in first, first
    except BaseException:
        await _kill_demo(proc)
        raise
    return proc, first.rsplit("local registry in ", 1)[1].strip()


async def _kill_demo(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the demo and what it started (its session), if still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()


async def test_sigterm_while_the_stack_starts_stops_every_process_and_the_workdir(
        tmp_path: Path) -> None:
    """SIGTERM to ``meshkit demo`` (a CI job's cancel, ``docker stop``, ``kill PID``)
    killed the demo (status -15) and left the service processes it had started running,
    registered and holding their ports, and its temporary workdir behind: the demo took
    SIGTERM only with ``--keep-running``, so its clean-up never ran. SIGTERM now stops
    it as Ctrl-C does: every process it started is stopped, the workdir removed, status
    143 (128 + SIGTERM). Signalled as soon as its first service process exists (a
    second or two of the demo, not a whole run)."""
    proc, workdir = await _start_demo(tmp_path)
    try:
        assert Path(workdir).parent == tmp_path, workdir
        await until(lambda: bool(processes_naming(workdir)), timeout_s=60,
                    what="the demo's first service process")
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert (proc.returncode, *left_behind(workdir)) == (143, [], False), \
            out.decode(errors="replace")[-2000:]
    finally:
        await _kill_demo(proc)


async def test_sigterm_before_the_services_are_ready_reports_no_stray_errors(
        tmp_path: Path) -> None:
    """SIGTERM while the demo's service processes were starting (none READY yet): each
    one that exited before READY left asyncio's "Future exception was never retrieved ...
    RuntimeError: exited before READY" on the demo's output (five times for five
    services), and the summary said "Stopped every process (SIGTERM, drained)" over exit
    codes of -15. Now neither: the summary says they ended by the signal."""
    proc, workdir = await _start_demo(tmp_path)
    try:
        await until(lambda: len(processes_naming(workdir)) >= 4, timeout_s=60,
                    what="the demo's service processes")
        await asyncio.sleep(0.3)  # their interpreters loading, not serving yet
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await _kill_demo(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 143, text[-2000:]
    assert "never retrieved" not in text and "Traceback" not in text, text[-2000:]
    stopped = [line for line in text.splitlines() if line.startswith("Stopped every")]
    assert stopped and not ("drained" in stopped[0] and "-15" in stopped[0]), stopped


def test_demo_sigterm_during_clean_up_does_not_cut_it_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SIGTERM that arrived while ``run()`` was already in its clean-up (the workload
    over, or Ctrl-C; ``docker stop`` or a CI cancel landing in those seconds of
    draining) cancelled the clean-up at its first await: the processes' drain was not
    waited for and the temporary workdir was left, while the demo printed "every
    process was stopped" and exited 143. ``run()`` now marks its clean-up
    (``args.cleaning_up``) and a SIGTERM then lets it finish, then 143. ``run`` is a
    stand-in of the same shape (work, then a marked, awaited clean-up), so that the
    signal lands in the clean-up deterministically."""
    from examples.ecom import demo

    cleaned: list[str] = []

    async def fake_run(args: argparse.Namespace) -> int:
        try:
            await asyncio.sleep(0.05)  # the workload
            return 0
        finally:
            args.cleaning_up = True
            # stop_all(): SIGTERM sent, the drain awaited; SIGTERM arrives meanwhile
            asyncio.get_running_loop().call_later(0.05, signal.raise_signal,
                                                  signal.SIGTERM)
            await asyncio.sleep(0.3)
            cleaned.append("stopped and removed")

    monkeypatch.setattr(demo, "run", fake_run)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = asyncio.run(asyncio.wait_for(demo.run_until_terminated(argparse.Namespace()), 5))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert cleaned == ["stopped and removed"], (
        f"clean-up cut short by SIGTERM (exit {code}): processes not drained, workdir left")
    assert code == 143


def test_demo_with_stdout_closed_leaves_no_workdir_with_keys_behind(tmp_path: Path) -> None:
    """``meshkit demo >&-`` (file descriptor 1 closed by a supervisor or a CI step) left
    its temporary workdir behind with the demo CA's private key and every workload key
    in it: ``meshkit.cli.main``'s stand-in stdout raises on write (a538de9), and
    ``run()`` printed its first line after making the certificates and before the
    ``try`` that removes the workdir. ``main()`` now removes its own workdir whatever
    ended the run: TMPDIR holds nothing once the command has ended (status 1, one
    line)."""
    meshkit_bin = Path(sys.executable).with_name("meshkit")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        ["sh", "-c", f'exec "{meshkit_bin}" demo --calls 10 >&-'],
        env=env, stderr=subprocess.PIPE, timeout=120, cwd=REPO)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [], (f"exit {proc.returncode}, stderr {proc.stderr[-200:]!r}; "
                        f"left in TMPDIR: {left}")


async def test_demo_ends_on_sigterm_when_started_with_it_blocked(tmp_path: Path) -> None:
    """``meshkit demo`` started with SIGTERM blocked in its inherited signal mask installed
    its SIGTERM handler (in ``main``, and for ``--keep-running``) but left the signal
    blocked: ``kill <pid>`` did nothing and the demo ran its whole workload (with
    ``--keep-running``, for ever). It unblocks the signals it handles now, as ``serve()``
    and ``meshkit prometheus-targets`` do: it stops its stack and exits 143."""
    # SIGTERM blocked, as a launcher that sigwait()s in one thread hands it down
    proc, _workdir = await _start_demo(tmp_path, block_sigterm=True)
    try:
        # no wait: _start_demo returned on the demo's first line, which run() prints
        # after run_until_terminated() installed its SIGTERM handler and unblocked it
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):  # still running: asserted below
            await asyncio.wait_for(proc.communicate(), 45)
        assert proc.returncode == 143, proc.returncode
    finally:
        await _kill_demo(proc)
