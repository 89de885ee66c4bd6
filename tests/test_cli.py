"""The meshkit command: routing, usage errors and the certs subcommand end to end."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import meshkit
from meshkit.cli import main


def test_version_and_usage(capsys: object) -> None:
    """`version` prints the version; no command is a usage error; unknown commands exit 2."""
    assert main(["version"]) == 0
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_certs_init_issue_inspect(tmp_path: Path) -> None:
    """`meshkit certs` creates a CA, issues a workload cert with its SPIFFE ID, keys 0600."""
    d = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(d)]) == 0
    assert main(["certs", "issue", "orderd", "--dir", str(d), "--ttl-h", "2"]) == 0
    key_mode = stat.S_IMODE(os.stat(d / "orderd.key").st_mode)
    assert key_mode == 0o600
    out = subprocess.run([sys.executable, "-m", "meshkit.cli", "certs", "inspect",
                          str(d / "orderd.pem")], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert "spiffe://meshkit.local/svc/orderd" in out
    assert main(["certs", "issue", "orderd", "--dir", str(d)]) != 0  # no silent overwrite
    assert meshkit.__version__ in subprocess.run(
        [sys.executable, "-m", "meshkit.cli", "version"], capture_output=True, text=True,
        timeout=30, check=True).stdout


def _meshkit_env() -> dict[str, str]:
    """The caller's environment without ``MESHKIT_*``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}


def test_certs_inspect_of_a_bundle_into_a_closed_pipe_ends_quietly_with_141(
        tmp_path: Path) -> None:
    """``meshkit certs inspect bundle.pem | head -1`` on a trust bundle whose listing is
    larger than stdout's 8 KiB buffer (``/etc/ssl/certs/ca-certificates.crt``) printed
    ``meshkit certs inspect: [Errno 32] Broken pipe`` and exited 1: the command's error
    handling took the BrokenPipeError for an unreadable file. It now ends like every
    command whose reader went away: status 141, nothing on stderr."""
    certs = tmp_path / "certs"
    assert main(["certs", "init", "--dir", str(certs)]) == 0
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((certs / "ca.pem").read_bytes() * 100)  # ~70 KiB of listing
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "meshkit.cli", "certs", "inspect",
                                 str(bundle)], env=_meshkit_env(), stdout=w,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    finally:
        os.close(w)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err.decode(errors="replace")) == (141, "")


def _with_stdout_closed(*args: str) -> subprocess.CompletedProcess[str]:
    """``meshkit ARGS >&-``: the command started with file descriptor 1 closed (as some
    supervisors and cron lines start a job)."""
    return subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m",
                           "meshkit.cli", *args], env=_meshkit_env(), stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=30, check=False)


def test_a_command_started_with_stdout_closed_fails_only_if_it_prints(tmp_path: Path) -> None:
    """With stdout closed (``>&-``) Python sets ``sys.stdout`` to None, and every command
    ended with an ``AttributeError: 'NoneType' object has no attribute 'flush'``
    traceback and status 1, even ``prometheus-targets --out F``, which prints nothing on
    stdout and had written its file. Now a command with nothing for stdout succeeds, and
    one whose output cannot be written fails with one line, status 1 (as ``ls >&-``
    does), instead of dropping its output silently."""
    out = tmp_path / "targets.json"
    assert main(["certs", "init", "--dir", str(tmp_path / "certs")]) == 0
    printing = (("version",), ("certs", "inspect", str(tmp_path / "certs" / "ca.pem")))
    with ThreadPoolExecutor(3) as pool:  # three independent commands, run together
        silent = pool.submit(_with_stdout_closed, "prometheus-targets", "--registry",
                             f"local://{tmp_path / 'reg'}", "--out", str(out))
        printed = list(pool.map(lambda args: _with_stdout_closed(*args), printing))
        done = silent.result()
    assert (done.returncode, out.read_text()) == (0, "[]\n"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for args, done in zip(printing, printed, strict=True):
        assert done.returncode == 1, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1, (args, done.stderr)
