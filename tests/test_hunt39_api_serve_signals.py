"""MeshServer.run_until_signal(signals) and serve(on_started=...) refuse what they cannot
use before anything starts, ConfigError quoting it: ``signals="SIGTERM"`` (one string)
raised ``ValueError: 'S' is not a valid Signals``, a number that is no signal another
ValueError, ``[signal.SIGKILL]`` a bare ``RuntimeError: sig 9 cannot be caught``;
``serve(..., on_started=5)`` bound, registered and served, then failed with ``TypeError:
'int' object is not callable`` (and drained)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

import meshkit
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_BAD = {"one-string": "SIGTERM", "no-signal": [99999], "sigkill": [signal.SIGKILL],
        "sigstop": [signal.SIGSTOP], "none-in-it": [None], "a-number": 15}


@pytest.mark.parametrize("value", sorted(_BAD))
def test_signals_it_cannot_wait_for_are_a_config_error(value: str, tmp_path: Path) -> None:
    async def main() -> None:
        server = meshkit.MeshServer("echo", [], registry=f"local://{tmp_path}",
                                    options=meshkit.ServeOptions(insecure=True))
        with pytest.raises(ConfigError) as caught:
            await asyncio.wait_for(server.run_until_signal(_BAD[value]), 20)  # type: ignore[arg-type]
        assert "signals" in str(caught.value)
        assert server.stats().instance_id is None  # never started, nothing registered

    asyncio.run(main())


@pytest.mark.parametrize("value", ["an-int", "a-string"])
def test_on_started_that_is_no_function_fails_before_serving(value: str,
                                                             tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError) as caught:
            await asyncio.wait_for(meshkit.serve(
                "echo", [], registry=f"local://{tmp_path}",
                options=meshkit.ServeOptions(insecure=True),
                on_started={"an-int": 5, "a-string": "ready"}[value]), 20)  # type: ignore[arg-type]
        assert "on_started" in str(caught.value)
        registry = meshkit.registry_from_uri(f"local://{tmp_path}")
        try:
            assert await registry.instances("echo") == frozenset()  # type: ignore[attr-defined]
        finally:
            await registry.close()

    asyncio.run(main())


def test_signal_numbers_and_an_on_started_function_still_work(tmp_path: Path) -> None:
    async def main() -> None:
        started: list[str] = []

        def on_started(server: meshkit.MeshServer) -> None:
            started.append(server.service)
            asyncio.get_running_loop().call_soon(asyncio.ensure_future, server.drain())

        await asyncio.wait_for(meshkit.serve(
            "echo", [], registry=f"local://{tmp_path}",
            options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0),
            on_started=on_started), 30)
        assert started == ["echo"]
        server = meshkit.MeshServer("echo", [], registry=f"local://{tmp_path}",
                                    options=meshkit.ServeOptions(insecure=True,
                                                                 drain_delay_s=0.0))
        await server.start()
        run = asyncio.ensure_future(server.run_until_signal([int(signal.SIGUSR2)]))
        await asyncio.sleep(0.2)  # its task runs its first step (handlers installed)
        await server.drain()
        await asyncio.wait_for(run, 30)
        assert server.stats().draining is False

    asyncio.run(main())
