"""After ``close()`` a channel's ``stats()`` (``/debug/mesh``, read on while it closes)
said ``SHUTDOWN`` for the channel but ``READY`` for each endpoint it had: the pool's
state trackers are cancelled before they see the sub-channels shut down, so the last
state stayed. Each endpoint now reads as one that left does (``FAILING``: a sub-channel
``SHUTDOWN``)."""

from __future__ import annotations

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, raw_server


async def test_endpoints_of_a_closed_channel_do_not_read_ready(registry: LocalRegistry) -> None:
    async with raw_server(handler("e1")) as (_, port):
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port))
        ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
        await ch.wait_for_endpoints(1, timeout_s=5)
        assert [e.state for e in ch.stats().endpoints] == ["READY"]
        await ch.close()
        stats = ch.stats()
    assert stats.state == "SHUTDOWN"
    assert [(e.state, e.present) for e in stats.endpoints] == [("FAILING", False)]
