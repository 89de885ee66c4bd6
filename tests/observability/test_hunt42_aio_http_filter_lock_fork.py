"""The malformed-request log filter of meshkit's HTTP servers (``meshkit.http``: one
warning a minute) takes a lock of its own in a child made by ``os.fork()``. A child forked
while another thread of the parent held it (that filter at work on an admin or JWKS
server's loop) inherited it held for good: the first malformed request to an admin
server the child started hung the child's event loop in the log call, and with it every
call the child served."""

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
import asyncio, json, logging, os, signal, socket, sys, time
import meshkit._aio_http as ah
from meshkit.observability import AdminOptions, AdminServer

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("meshkit.http").addHandler(Keep())

ah._CLIENT_ERRORS._lock.acquire()  # as a thread of the parent logging at the fork
pid = os.fork()
if pid == 0:
    async def child():
        admin = AdminServer(AdminOptions(require_server=False))
        port = await admin.start()
        def bad():
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(5)
            s.sendall(b"GET * HTTP/1.1\r\n\r\n")
            try:
                return s.recv(12)
            except OSError as e:
                return type(e).__name__.encode()
            finally:
                s.close()
        answer = await asyncio.get_running_loop().run_in_executor(None, bad)
        await asyncio.wait_for(admin.stop(), 5)
        return answer
    answer = asyncio.run(child())
    ok = answer.startswith(b"HTTP/1.") and any("malformed HTTP request" in r for r in records)
    os._exit(0 if ok else 3)
deadline = time.monotonic() + 15
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(json.dumps({"child": os.waitstatus_to_exitcode(status)}))
        break
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(json.dumps({"child": "hung"}))
        break
    time.sleep(0.05)
ah._CLIENT_ERRORS._lock.release()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_forked_child_logs_a_malformed_request() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=_ROOT, capture_output=True,
                          text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"child": 0}, done.stderr
