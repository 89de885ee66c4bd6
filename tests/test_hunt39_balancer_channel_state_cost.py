"""``MeshChannel.get_state()`` reads whether an endpoint is READY (or connecting) from
the pool's endpoints kept by state, not a scan of every endpoint.

``channel_ready()`` and ``wait_for_state_change()`` call ``get_state()`` on every change
of the pool; it took the minimum state over every endpoint, so a watcher of a channel
of 2,000 endpoints read 2,000 states at each of the 2,000 changes of its dial (4 million
reads in one loop). Counted here: endpoint states read per ``get_state()``.
"""

from __future__ import annotations

import grpc
import pytest

import meshkit
import meshkit._pool
from meshkit.balancer import EndpointState
from meshkit.discovery import Instance, LocalRegistry
from tests.support.counting import CountedEndpoint as _Counted
from tests.support.echo import handler
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(90)

_N = 120


async def test_get_state_reads_few_endpoint_states(registry: LocalRegistry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """120 endpoints, 20 of them refused: READY, read in a few reads (not 120)."""
    monkeypatch.setattr(meshkit._pool, "Endpoint", _Counted)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler("s"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    dead = free_port()
    try:
        for i in range(_N):
            await registry.register(Instance(service="st", instance_id=f"e{i:03d}",
                                             host="127.0.0.1",
                                             port=port if i >= 20 else dead))
        async with meshkit.dial("st", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(_N - 20, timeout_s=60)
            assert ch._pool.endpoints["e000"].state is not EndpointState.READY
            _Counted.reads = 0
            states = {ch.get_state() for _ in range(100)}
            assert states == {grpc.ChannelConnectivity.READY}
            assert _Counted.reads / 100 <= 5, f"{_Counted.reads / 100:.0f} reads per get_state"
    finally:
        await server.stop(None)
