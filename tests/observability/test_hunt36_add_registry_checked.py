"""``AdminServer.add_registry`` refuses what is not a ``CollectorRegistry`` instance with
``ConfigError``: ``None``, the class itself or a string were kept, and every later scrape
of ``/metrics`` failed with a 500 (``registry.collect()`` raised), every metric of the
process lost from then on."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from meshkit.errors import ConfigError
from meshkit.observability import AdminOptions, AdminServer


@pytest.mark.parametrize("bad", [None, CollectorRegistry, "default", Counter])
async def test_add_registry_refuses_what_is_not_a_registry(bad: Any) -> None:
    own = CollectorRegistry()
    Counter("hunt36_checked", "Checked.", registry=own).inc()
    admin = AdminServer(AdminOptions(registry=own, require_server=False))
    with pytest.raises(ConfigError, match="registry"):
        admin.add_registry(bad)
    admin.remove_registry(bad)  # nothing happens for one not added
    await admin.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(admin.url + "/metrics") as resp:
            assert resp.status == 200
            assert "hunt36_checked_total 1.0" in await resp.text()
    finally:
        await admin.stop()
