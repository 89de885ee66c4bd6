"""``wait_for_endpoints`` that runs out raised a bare ``TimeoutError()``: a startup
readiness gate (``await ch.wait_for_endpoints(2, timeout_s=30)``) that fails logs a
traceback ending in "TimeoutError" with no text, naming neither the service nor how far
it got. It now says both."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, raw_server


async def test_the_timeout_names_the_service_and_the_count(registry: LocalRegistry) -> None:
    async with raw_server(handler("e1")) as (_, port):
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port))
        async with meshkit.dial("echo", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=5)
            with pytest.raises(TimeoutError) as err:
                await ch.wait_for_endpoints(2, timeout_s=0.2)
    text = str(err.value)
    assert "'echo'" in text and "1 of 2" in text and "0.2" in text, text
