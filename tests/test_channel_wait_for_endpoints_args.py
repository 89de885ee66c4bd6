"""``wait_for_endpoints(count, timeout_s)`` refuses arguments it cannot honour, quoted
(meshkit/channel.py), as ``close(grace)`` does.

A NaN ``timeout_s`` (a bound parsed from a configuration that said ``nan``) waited for
ever, the bound asked for never firing; a ``bool`` or float ``count`` was taken for a
number of endpoints (``True``: 1), a string raised ``TypeError`` from a comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError


@pytest.mark.parametrize(("count", "timeout_s"), [
    (1, math.nan), (1, -1.0), (1, "5"), (True, 1.0), (1.5, 1.0), ("1", 1.0), (-1, 1.0)])
async def test_bad_arguments_are_refused(registry: LocalRegistry, count: Any,
                                         timeout_s: Any) -> None:
    async with meshkit.dial("nobody", registry=registry,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        with pytest.raises(ConfigError):
            await ch.wait_for_endpoints(count, timeout_s)


async def test_good_arguments_still_work(registry: LocalRegistry) -> None:
    async with meshkit.dial("nobody", registry=registry,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        await ch.wait_for_endpoints(0, 0.5)
        with pytest.raises(TimeoutError):
            await ch.wait_for_endpoints(1, 0.05)
