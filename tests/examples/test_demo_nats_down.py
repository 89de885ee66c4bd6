"""The demo's own NATS connections (this run's projection consumer, made before the stack
starts and deleted after it stopped) give up at once when NATS cannot be reached.

They connected with ``allow_reconnect=False`` and ``connect_timeout=2``, taken for one
attempt; nats-py (2.16) tries a server that refuses up to ``max_reconnect_attempts`` (60)
times ``reconnect_time_wait`` (2 s) apart whatever ``allow_reconnect`` says, with a
traceback per attempt from its default error callback: ``make demo`` without a NATS
hung two minutes before starting the stack and two more after stopping it, printing 120
tracebacks, where the code meant to go on at once (summaryd reports the outage itself).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from examples.ecom import demo, demo_events

pytestmark = pytest.mark.timeout(60)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


async def test_the_demo_goes_on_at_once_when_nats_is_down(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo_events, "NATS_URL", f"nats://127.0.0.1:{_closed_port()}")
    async with asyncio.timeout(10):  # before: about 120 s each
        await demo._create_durable()
        await demo_events.delete_durable()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured
