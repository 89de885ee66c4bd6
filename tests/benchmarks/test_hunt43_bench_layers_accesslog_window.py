"""``benchmarks.layers`` times a variant's calls with ``time.process_time``; the access log
renders its captured records when a batch is written (a 0.2 s timer, or 327 records), so
the window must start with the warm-up's records written and end with the run's own:
before, up to 327 warm-up records were rendered inside the ``+accesslog`` window and its
last records (up to 327) after it, on the timer, inside whichever variant ran next (the
runner's rounds flush for the same reason)."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import layers


class _Clock:
    """``layers.time`` with a ``process_time`` noting the access-log records pending at
    each read (the window's start and end)."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.pending: list[int] = []

    def process_time(self) -> float:
        from meshkit.observability import _logging

        self.pending.append(sum(len(w._buf) for w in list(_logging._writers)))
        return self._time.process_time()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    import structlog

    from meshkit.observability import configure_logging, flush_logs

    c = _Clock()
    monkeypatch.setattr(layers, "time", c)
    sink = io.StringIO()
    monkeypatch.setattr("sys.stderr", sink)
    configure_logging("INFO", json=True)
    yield c
    flush_logs()
    structlog.reset_defaults()


@pytest.mark.timeout(120)
def test_client_window_holds_its_own_access_lines(clock: _Clock) -> None:
    from meshkit.discovery import Instance, LocalOptions, LocalRegistry

    async def go() -> None:
        with tempfile.TemporaryDirectory() as d:
            registry = LocalRegistry(LocalOptions(path=Path(d) / "r", ttl_s=15.0))
            for i in (1, 2):
                await registry.register(Instance(service="bench", instance_id=f"b{i}",
                                                 host="127.0.0.1", port=i))
            try:
                options = layers._client_variants(None)["+accesslog"]
                await layers._client_run(options, registry, 150)
            finally:
                await registry.close()

    asyncio.run(go())
    assert clock.pending[-2:] == [0, 0], clock.pending  # t0: warm-up written; t1: its own


@pytest.mark.timeout(120)
def test_server_window_holds_its_own_access_lines(clock: _Clock, tmp_path: Path) -> None:
    from benchmarks.stacks import Secrets, bench_token

    secrets = Secrets(tmp_path)
    assert not secrets.create()
    options, with_cert = layers._server_variants(None, secrets)["+accesslog"]
    asyncio.run(layers._server_run(options, with_cert, secrets,
                                   bench_token(secrets.jwt_key), 150))
    assert clock.pending[-2:] == [0, 0], clock.pending
