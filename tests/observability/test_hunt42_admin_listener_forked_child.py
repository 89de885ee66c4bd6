"""A child forked while an admin server listens (a ``multiprocessing`` worker, a
pre-fork worker) does not keep its listening socket. Before, the child's copy of the
descriptor kept the port listening after the parent's ``stop()``: a scrape connected and
then hung unanswered until its timeout (nothing accepts in the child) instead of being
refused, and the admin server could not be started on its port again ("Address already
in use") while any such child lived, a restarted service's included. The child's copies
now name ``/dev/null`` (as the registries' and the rate limiter's connections do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

_ROOT = Path(__file__).parents[2]

_SCRIPT = r"""
import asyncio, json, os, signal, socket, time
from meshkit.observability import AdminOptions, AdminServer

async def main():
    admin = AdminServer(AdminOptions(require_server=False))
    port = await admin.start()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker that outlives the parent's admin server
        os.close(r)
        os.write(w, b"1")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    out = {}
    try:
        await admin.stop()
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            out["after_stop"] = "answered %r" % s.recv(20)
        except OSError as e:
            out["after_stop"] = type(e).__name__
        finally:
            s.close()
        again = AdminServer(AdminOptions(require_server=False, port=port))
        try:
            await again.start()
            out["restart"] = "ok"
            await again.stop()
        except OSError as e:
            out["restart"] = str(e)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_forked_child_does_not_keep_the_admin_port() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=_ROOT, capture_output=True,
                          text=True, timeout=45, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"after_stop": "ConnectionRefusedError", "restart": "ok"}, out
