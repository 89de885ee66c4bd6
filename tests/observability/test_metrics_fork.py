"""A child made by os.fork() can scrape its metrics while its parent was scraping.

MeshCollector and the certificate gauges keep a lock each, held while a scrape reads the
live channels and servers (on the event loop) or the published certificates. A child
forked while another thread of the parent held one (the admin server's scrape thread, a
pre-fork server forking its workers) inherited it held for ever: the child's first scrape
blocked for good, on its event loop (a read runs there), so the whole child hung.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = """
import os, threading, time
from prometheus_client import CollectorRegistry, generate_latest
from meshkit.observability._metrics import rpc_metrics, set_certificate_expiry

registry = CollectorRegistry()
rpc_metrics(registry)
set_certificate_expiry("svc", 2e9, not_before_unix_s=1.9e9, registry=registry)

def scrapes():
    while True:
        generate_latest(registry)

for _ in range(2):
    threading.Thread(target=scrapes, daemon=True).start()
time.sleep(0.05)
hung = 0
for k in range(8):
    pid = os.fork()
    if pid == 0:
        generate_latest(registry)
        os._exit(0)
    deadline = time.monotonic() + 2
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
print(f"HUNG {hung}", flush=True)
os._exit(0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_during_a_scrape_can_scrape() -> None:
    """Eight forks while two threads scrape: every child's scrape ends."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "HUNG 0", (done.stdout, done.stderr[-2000:])
