"""``meshkit prometheus-targets --out`` naming something that is not a regular file.

Each pass first read the whole of ``--out`` (to skip an unchanged file) with
``Path.read_bytes()``, whatever it was: a FIFO (``mkfifo t; --out t``, or ``--out
/dev/stdout`` piped into another command) blocked that read for ever, in the event loop's
thread, so neither the ``--timeout-s`` bound, SIGTERM nor Ctrl-C ended the command; a
character device that never ends (``--out /dev/zero``, ``/dev/full``) was read into memory
without bound. Now a pass refuses an ``--out`` that exists and is neither a regular file
nor a directory before it reads anything: one line on stderr naming ``--out`` and what it
is, status 1 (as for an ``--out`` whose directory is missing), and the thing is left as it
was (``os.replace`` would have put a regular file in its place)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)


def _run(*args: str, timeout_s: float = 40.0) -> tuple[int | None, str, str]:
    """``meshkit ARGS`` without the caller's ``MESHKIT_*``; (status or None when it did not
    end within ``timeout_s``, then killed, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = subprocess.Popen([sys.executable, "-m", "meshkit.cli", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        return None, out.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def test_a_fifo_is_refused_not_read_for_ever(tmp_path: Path) -> None:
    """Status 1 in bounded time, one line naming --out; the FIFO is still a FIFO."""
    fifo = tmp_path / "targets.json"
    os.mkfifo(fifo)
    status, out, err = _run("prometheus-targets", "--out", str(fifo),
                            "--registry", f"local://{tmp_path}/reg")
    assert status == 1, (status, out, err)
    assert f"--out {fifo}" in err and "not a regular file" in err, err
    assert "Traceback" not in err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["targets.json"]  # no temporary file left


def test_a_regular_file_is_still_rewritten(tmp_path: Path) -> None:
    """The check does not refuse the ordinary case: an existing file is replaced."""
    target = tmp_path / "targets.json"
    target.write_text("stale\n")
    status, _, err = _run("prometheus-targets", "--out", str(target),
                          "--registry", f"local://{tmp_path}/reg")
    assert status == 0, err
    assert target.read_text() == "[]\n"


def test_dev_stdout_on_a_pipe_is_named_as_given(tmp_path: Path) -> None:
    """``--out /dev/stdout`` with stdout a pipe: the path was resolved first, through
    ``/proc/self/fd/1``, into ``/proc/PID/fd/pipe:[N]``, and the pass failed "--out
    /proc/4242/fd/pipe:[133097]: No such file or directory", a path the user never
    typed; now it is refused as the FIFO it is, named as given."""
    if not os.path.exists("/dev/stdout"):
        pytest.skip("no /dev/stdout")
    status, out, err = _run("prometheus-targets", "--out", "/dev/stdout",
                            "--registry", f"local://{tmp_path}/reg")
    assert status == 1, (status, out, err)
    assert err.strip() == ("meshkit prometheus-targets: --out /dev/stdout: not a regular "
                           "file (a FIFO)"), err
