"""The core ConsulRegistry checks of test_consul.py, against a real Consul agent.

Runs only when ``CONSUL_HTTP_ADDR`` names an agent (e.g. ``consul agent -dev`` and
``CONSUL_HTTP_ADDR=127.0.0.1:8500``); ``CONSUL_HTTP_TOKEN``, ``CONSUL_CACERT`` and the other
variables of Consul's CLI apply. The check functions are the very ones the double tests run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from meshkit.discovery._consul import ConsulOptions
from tests.discovery.test_consul import (
    check_heartbeat,
    check_register_again_of_a_critical_id,
    check_register_watch_deregister,
)

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("CONSUL_HTTP_ADDR"),
        reason="CONSUL_HTTP_ADDR is not set: no real Consul agent to test against",
    ),
    pytest.mark.timeout(30),
]

# Real agents: TTLs of a couple of seconds, short blocking waits; DeregisterCriticalServiceAfter
# stays at Consul's one-minute minimum (the checks deregister what they register).
REAL: dict[str, Any] = {
    "ttl_s": 2.0,
    "wait_s": 2.0,
    "backoff_base_s": 0.05,
    "backoff_max_s": 1.0,
    "request_timeout_s": 5.0,
}


@pytest.fixture
def real_options() -> ConsulOptions:
    """Options for the agent named by the environment, with short test timings."""
    return ConsulOptions.from_env(**REAL)


async def test_register_watch_deregister_real(real_options: ConsulOptions) -> None:
    """Against a real agent: watch yields [] then each registration and deregistration."""
    await check_register_watch_deregister(real_options)


async def test_heartbeat_real(real_options: ConsulOptions) -> None:
    """Against a real agent: the heartbeat keeps a TTL instance passing, and it lapses after."""
    await check_heartbeat(real_options)


async def test_register_again_of_a_critical_id_real(real_options: ConsulOptions) -> None:
    """Against a real agent (which keeps the status of a CheckID it holds, whatever Status a
    registration sends): an id registered again while its TTL check is critical is passing
    as soon as register() returns, with only the new registration's check."""
    await check_register_again_of_a_critical_id(real_options)
