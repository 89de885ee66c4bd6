"""The ``meshkit`` operator commands as a process is started: interpreter flags
(``python -OO``), standard error closed, signals inherited blocked, a deleted working
directory. Every command runs as a subprocess, loopback only."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.cli.test_ops_commands import meshkit_cli
from tests.support.launch import launched
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

_ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def stripped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of ``python -OO`` (``PYTHONOPTIMIZE=2``), whose ``.opt-2.pyc`` files
    go under a directory of this module's (``PYTHONPYCACHEPREFIX``), not next to the
    sources. (It was ``PYTHONDONTWRITEBYTECODE=1``, which writes none: as no ``.opt-2.pyc``
    exists, each command compiled grpc, protobuf, aiohttp... from source, 1.5 s of CPU.)
    The first command compiles them with docstrings stripped, the next ones load that
    same stripped code."""
    return {"PYTHONOPTIMIZE": "2", "PYTHONDONTWRITEBYTECODE": "",  # empty: unset
            "PYTHONPYCACHEPREFIX": str(tmp_path_factory.mktemp("opt2-pycache"))}


def _registry(tmp_path: Path) -> str:
    return f"local://{tmp_path / 'reg'}?ttl_s=60&poll_interval_s=0.1"


async def _started(*args: str, close_stderr: bool = False, block_sigterm: bool = False,
                   cwd: Path | None = None) -> asyncio.subprocess.Process:
    """``meshkit ARGS`` (the CLI module of this checkout, no ``MESHKIT_*`` from the
    caller's environment) with its stderr closed or SIGTERM blocked by a launcher before
    its exec (:func:`tests.support.launch.launched`); stdin from /dev/null, stdout a
    pipe, stderr inherited unless closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = _ROOT
    return await asyncio.create_subprocess_exec(
        *launched(sys.executable, "-m", "meshkit.cli", *args, close_stderr=close_stderr,
                  block_sigterm=block_sigterm),
        env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)


@pytest.mark.parametrize("command", ["services", "call", "prometheus-targets", "demo"])
async def test_commands_work_with_docstrings_stripped(command: str,
                                                     stripped: dict[str, str]) -> None:
    """A user runs ``meshkit services`` / ``call`` / ``prometheus-targets`` / ``demo`` in
    an image that sets ``PYTHONOPTIMIZE=2`` (``python -OO``, which sets every
    ``__doc__`` to ``None``). Before: each died building its parser, even for
    ``--help``: ``AttributeError: 'NoneType' object has no attribute 'split'`` (the
    description was ``__doc__.split(...)``), exit 1. Now: the command works, its
    description merely missing, as argparse has it with ``description=None``."""
    code, out, err = await meshkit_cli(command, "--help", env_extra=stripped)
    assert code == 0, err[-600:]
    assert out.startswith(f"usage: meshkit {command}"), out[:200]


async def test_a_prometheus_targets_pass_runs_with_docstrings_stripped(
        tmp_path: Path, stripped: dict[str, str]) -> None:
    """A cron job runs ``meshkit prometheus-targets --registry ... --out FILE`` under
    ``PYTHONOPTIMIZE=2``. Before: no file, exit 1, an ``AttributeError`` traceback from
    the parser's description. Now: the pass runs, status 0, the file written."""
    out = tmp_path / "targets.json"
    code, _, err = await meshkit_cli("prometheus-targets", "--registry",
                                     _registry(tmp_path), "--out", str(out),
                                     env_extra=stripped)
    assert code == 0, err[-600:]
    assert out.read_text().strip() == "[]"


async def test_an_operator_command_runs_with_stderr_closed(tmp_path: Path) -> None:
    """An operator runs ``meshkit prometheus-targets --registry ... --out FILE 2>&-`` (a
    cron line, a supervisor without a log sink; Python sets ``sys.stderr`` to ``None``).
    Before: exit 1 and no file - ``quiet_logging()`` called ``configure_logging()``,
    which read ``sys.stderr.isatty()``; past that, its "wrote N target(s)" line went to
    stdout (``print(file=None)`` prints there). Now: the pass runs, status 0, the file
    written, nothing on stdout."""
    out = tmp_path / "targets.json"
    proc = await _started("prometheus-targets", "--registry", _registry(tmp_path),
                          "--out", str(out), close_stderr=True)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, stdout) == (0, b"")
    assert out.read_text().strip() == "[]"


async def test_a_failing_command_with_stderr_closed_prints_nothing_on_stdout(
        tmp_path: Path) -> None:
    """``meshkit services --json 2>&-`` on a registry listing nothing: the document
    (``[]``) is all stdout carries and the status is 1; its "no instance listed" line,
    meant for stderr, is dropped (before: a crash in ``configure_logging()``, exit 1
    with nothing at all)."""
    proc = await _started("services", "--json", "--registry", _registry(tmp_path),
                          close_stderr=True)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, stdout) == (1, b"[]\n")


def _block_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


async def test_prometheus_targets_watch_ends_on_sigterm_when_started_with_it_blocked(
        tmp_path: Path) -> None:
    """``meshkit prometheus-targets --watch`` started by a parent that had SIGTERM
    blocked (the signal mask survives fork and exec, POSIX). Before: its SIGTERM handler
    never ran, SIGTERM stayed pending for ever, the watch never ended. Now: the command
    unblocks the signals it handles (as Go's ``signal.Notify`` does) and SIGTERM ends it
    with status 0."""
    out = tmp_path / "targets.json"
    proc = await _started("prometheus-targets", "--watch", "--interval-s", "0.2",
                          "--registry", _registry(tmp_path), "--out", str(out),
                          block_sigterm=True)
    try:
        await until(lambda: out.exists() or proc.returncode is not None, timeout_s=30,
                    what="the watcher's first pass")
        assert out.exists(), proc.returncode
        proc.send_signal(signal.SIGTERM)
        code: int | None = await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        code = None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0


async def test_prometheus_targets_from_a_deleted_directory_is_one_line(
        tmp_path: Path) -> None:
    """``meshkit prometheus-targets --out targets.json`` (a relative path) run from a
    working directory that was deleted meanwhile. Before: a ``FileNotFoundError``
    traceback (the path was resolved outside the command's error handling). Now: one
    line on stderr naming ``--out``, status 1."""
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env["PYTHONPATH"] = _ROOT

    # -P: no working directory on sys.path, as the installed ``meshkit`` script runs
    # (CPython 3.13.0's import of socket fails SystemError with a deleted one there)
    proc = await asyncio.create_subprocess_exec(
        *launched(sys.executable, "-P", "-c",
                  "import sys; from meshkit.cli import main; sys.exit(main())",
                  "prometheus-targets", "--registry", _registry(tmp_path),
                  "--out", "targets.json", deleted_cwd=str(gone)),
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode(errors="replace").splitlines()
    assert (proc.returncode, out, len(lines)) == (1, b"", 1), lines[-5:]
    assert lines[0].startswith("meshkit prometheus-targets: --out targets.json"), lines
