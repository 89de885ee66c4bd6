"""The demo's stop bound leaves a service on a loaded box the time to exit by itself.

``Stack.stop_all`` SIGKILLed every service still running 10 s after its SIGTERM. A
service drains in its own bound (``--drain-delay-s`` 0.5 s + ``--grace-s`` 5 s) and then
exits; on a loaded box (load ~19 on 2 cores) the five services of a kept stack drained in
0.6 s but took 6.5-7.1 s from SIGTERM to exit, and at a load of ~24 (a CI run) all five
were SIGKILLed (``exit codes {... -9 ...}``), Ctrl-C ending a clean stack as a failed one.
The bound is now :data:`examples.ecom.demo.STOP_GRACE_S` (30 s, Kubernetes' default
``terminationGracePeriodSeconds``); the wait still ends as soon as every process exited.

Run as ``python -m`` this module is the "service": READY, then on SIGTERM it takes 12 s
to exit 0 (a slow exit, as on a loaded box).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

_SLOW_EXIT_S = 12.0


def _slow_exit(*_: object) -> None:
    time.sleep(_SLOW_EXIT_S)
    sys.exit(0)


if __name__ == "__main__":  # the service: READY, a slow exit on SIGTERM
    signal.signal(signal.SIGTERM, _slow_exit)
    print("READY slow-1 127.0.0.1:1", flush=True)
    while True:
        time.sleep(1)


async def test_a_service_slow_to_exit_after_sigterm_is_not_sigkilled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service exiting 12 s after SIGTERM exits 0 under stop_all's default bound."""
    from examples.ecom import demo

    monkeypatch.setitem(demo.SERVICES, "slow", __name__)
    stack = demo.Stack(tmp_path, f"local://{tmp_path / 'registry'}", None)
    await stack.start("slow", "slow-1", timeout_s=60)
    codes = await asyncio.wait_for(stack.stop_all(), 90)
    assert codes == {"slow-1": 0}, codes  # before: {'slow-1': -9}, SIGKILLed at 10 s
    assert demo.STOP_GRACE_S >= 30.0
