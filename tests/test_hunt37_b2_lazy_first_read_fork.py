"""A child made by ``os.fork()`` while another thread of the parent was in a first read of a
lazily imported ``meshkit`` name (``meshkit.dial`` importing its module) reads names on its
own: the first-read lock that thread held is not inherited held (a pre-fork server's
worker hung for ever on its first ``meshkit.ConfigError``, a module already imported)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import importlib.machinery, os, sys, threading, time
    import meshkit
    import meshkit.errors  # loaded: its names need no import

    started, release = threading.Event(), threading.Event()

    class SlowLoader:  # a first read whose module takes a while to run
        def __init__(self, loader):
            self.loader = loader

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            started.set()
            release.wait(60)
            self.loader.exec_module(module)

    class SlowChannelImport:
        def find_spec(self, name, path=None, target=None):
            if name != "meshkit.channel":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            spec.loader = SlowLoader(spec.loader)
            return spec

    sys.meta_path.insert(0, SlowChannelImport())
    reader = threading.Thread(target=lambda: meshkit.dial)
    reader.start()
    assert started.wait(30)
    pid = os.fork()
    if pid == 0:
        meshkit.ConfigError  # the child's own first read
        meshkit.uvloop_installed()  # and one that imports its module
        os._exit(0)
    deadline = time.monotonic() + 20
    status = None
    while time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    release.set()
    reader.join()
    print("CHILD", "hung" if status is None else os.waitstatus_to_exitcode(status))
""")


def test_a_child_forked_during_a_first_read_reads_names() -> None:
    """The child's first reads of loaded and unloaded modules' names return (status 0)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "CHILD 0" in done.stdout, (done.stdout, done.stderr)
