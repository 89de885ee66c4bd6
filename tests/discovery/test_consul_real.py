"""The core ConsulRegistry checks of test_consul.py, against a real Consul agent.

Runs only when ``CONSUL_HTTP_ADDR`` names an agent (e.g. ``consul agent -dev`` and
``CONSUL_HTTP_ADDR=127.0.0.1:8500``); ``CONSUL_HTTP_TOKEN``, ``CONSUL_CACERT`` and the other
variables of Consul's CLI apply. The check functions are the very ones the double tests run.
"""

from __future__ import annotations

import json
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


async def test_an_id_held_by_another_service_is_refused_real(
        real_options: ConsulOptions) -> None:
    """Against a real agent (which keys services by ID, unique per agent): a register of
    an id another service holds is refused, a deregister of it leaves it, and the same
    service takes its id over."""
    import consul.aio

    from tests.discovery.test_consul_id_across_services import (
        check_an_id_held_by_another_service_is_refused,
    )

    o = real_options
    host, _, port = o.addr.rpartition(":")
    verify: bool | str = o.ca_file if (o.verify and o.ca_file) else o.verify
    cert = (o.cert_file, o.key_file) if o.cert_file and o.key_file else None
    agent = consul.aio.Consul(host=host.strip("[]"), port=int(port), token=o.token,
                              scheme=o.effective_scheme, verify=verify, cert=cert)

    async def held_by() -> str | None:
        # GET /v1/agent/service/<id> (404: unknown), with the token
        headers = {"X-Consul-Token": o.token} if o.token else {}
        response = await agent.http.get(lambda r: r, "/v1/agent/service/pod-1",
                                        headers=headers)
        if response.code == 404:
            return None
        assert response.code == 200, (response.code, response.body)
        return str(json.loads(response.body)["Service"])

    try:
        await check_an_id_held_by_another_service_is_refused(o, held_by)
    finally:
        await agent.close()
