"""ConsulOptions: with a gRPC check (``check="grpc"`` or ``"both"``) ``check_interval_s``
must be below ``deregister_critical_after_s``. Against the Consul agent test double."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import meshkit
from meshkit.discovery import ConsulOptions, ConsulRegistry
from meshkit.errors import ConfigError
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(30)

_FAST = {"ttl_s": 0.6, "wait_s": 0.5, "backoff_base_s": 0.01, "backoff_max_s": 0.04,
         "watch_query_interval_s": 0.1}


@pytest.mark.parametrize("check", ["grpc", "both"])
def test_a_grpc_check_reaped_before_its_first_run_is_refused(check: str) -> None:
    """``check="both"`` registers the gRPC check too, with the same
    ``DeregisterCriticalServiceAfter``; the keeper's re-registration after the agent
    forgot the instance starts it critical, and the agent runs it first only after up to
    ``check_interval_s``: with ``check_interval_s >= deregister_critical_after_s`` the
    agent reaped the instance before that, again at each re-registration, so after an
    agent restart the instance never came back to any watch. That was refused for
    ``"grpc"`` only; ``"both"`` is refused too, quoting both values."""
    with pytest.raises(ConfigError) as info:
        ConsulOptions(check=check, check_interval_s=90.0, deregister_critical_after_s=60.0)
    text = str(info.value)
    assert "check_interval_s must be < deregister_critical_after_s=60.0" in text
    assert f"check={check!r}" in text and "got 90.0" in text
    ConsulOptions(check="ttl", check_interval_s=90.0, deregister_critical_after_s=60.0)


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


async def test_both_checks_come_back_after_the_agent_forgot_the_instance(
        double: ConsulDouble) -> None:
    """With ``check="both"`` and the gRPC check's interval below
    ``deregister_critical_after_s``, an instance whose agent lost its state is registered
    again and passes again (its gRPC check's first run comes before the reaper)."""
    opts = ConsulOptions(addr=double.addr, check="both", check_interval_s=0.3,
                         deregister_critical_after_s=1.0, **_FAST)
    reg = ConsulRegistry(opts)
    srv = meshkit.MeshServer("orderd", registry=reg, options=meshkit.ServeOptions(
        insecure=True, admin=None, drain_delay_s=0, grace_s=1))
    await srv.start()
    try:
        instance = srv.instance
        assert instance is not None
        double.forget_all()
        deadline = time.monotonic() + 10
        passing = 0
        while time.monotonic() < deadline and passing < 10:  # 1 s passing in a row
            live = (await reg.snapshot("orderd")).live
            passing = passing + 1 if instance in live else 0
            await asyncio.sleep(0.1)
        assert passing >= 10 and reg.status().reopened >= 1
    finally:
        await srv.drain()
        await reg.close()
