"""A command's usage printed by argparse (``meshkit services --help | head -0``, a
reader gone; ``meshkit call --help >&-``, stdout closed) ended with status 0 and nothing
said: argparse's ``_print_message`` swallows the ``OSError`` its write raises, so the
broken pipe (or the closed stdout) never reached :func:`meshkit.cli.main`, and nothing
was left in the buffer to fail again. Every other output of the commands ends with 141
(a reader gone, nothing on stderr) or 1 (stdout closed: one line), as the module
docstring says; the usage now does too: stdout remembers the write that failed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

_COMMANDS = [("services", "--help"), ("call", "--help"), ("prometheus-targets", "-h"),
             ("certs", "--help"), ("help", "services")]
_IDS = ["services", "call", "prometheus-targets", "certs", "help-services"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}


@pytest.mark.parametrize("args", _COMMANDS, ids=_IDS)
def test_usage_into_a_pipe_without_reader_ends_with_141(args: tuple[str, ...]) -> None:
    """The pipe's reader is closed before the command starts: status 141, stderr empty."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "meshkit.cli", *args], env=_env(),
                                stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    finally:
        os.close(w)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err.decode(errors="replace")) == (141, ""), args


@pytest.mark.parametrize("args", _COMMANDS, ids=_IDS)
def test_usage_with_stdout_closed_fails_with_one_line(args: tuple[str, ...]) -> None:
    """``meshkit COMMAND --help >&-``: status 1 and one line, as ``meshkit version >&-``."""
    done = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m",
                           "meshkit.cli", *args], env=_env(), stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    assert done.returncode == 1, (args, done.stderr)
    assert done.stderr.splitlines() == ["meshkit: stdout is closed, the output cannot be "
                                        "written"], done.stderr


def test_usage_into_a_pipe_still_read_is_printed() -> None:
    """A reader that reads: the usage, status 0, as before."""
    done = subprocess.run([sys.executable, "-m", "meshkit.cli", "services", "--help"],
                          env=_env(), capture_output=True, text=True, timeout=30,
                          check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: meshkit services")
