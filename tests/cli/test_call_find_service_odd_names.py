"""``meshkit call /pkg.Svc/Method`` asks each service the registry lists whether it serves
the method; a listed name no mesh client can dial (a Consul catalog holds other tools'
services too: ``"a web cache"``) is passed over, not the end of the command."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

import meshkit
from meshkit._cli._call import _Args, _run
from meshkit._cli.call import parse_target
from meshkit.discovery import Instance, LocalRegistry
from tests.cli.test_ops_commands import greeter, uri

pytestmark = pytest.mark.timeout(60)

__all__ = ["greeter"]  # the fixture, imported to be used here


class _ListsAnOddName:
    """A registry listing, beside a real one's services, a name no mesh client can dial
    (``"a web cache"``, listed first: Consul takes it, as other tools register it)."""

    def __init__(self, inner: LocalRegistry) -> None:
        self.inner = inner

    async def services(self) -> list[str]:
        return ["a web cache", *await self.inner.services()]

    def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        return self.inner.watch(service)

    async def register(self, instance: Instance) -> None:
        raise NotImplementedError

    async def deregister(self, instance: Instance) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


async def test_a_full_method_target_passes_over_a_name_no_client_can_dial(
        greeter: meshkit.MeshServer, registry: LocalRegistry) -> None:
    """``meshkit call /pkg.Svc/Method`` dialled each listed service in turn, and the one
    whose name ``dial()`` refuses failed the whole command: ``ConfigError: service name
    must match ...`` (exit 2), naming a service the user never typed, though another
    listed service serves the method. It is passed over (it cannot be a meshkit
    service)."""
    assert uri(registry)  # the greeter is registered there
    args = _Args(parse_target("/meshkit.clitest.Greeter/SayHello"), '{"name": "x"}',
                 _ListsAnOddName(registry),  # type: ignore[arg-type]
                 meshkit.DialOptions(insecure=True, telemetry=None), (), 10.0)
    text, warning = await _run(args)
    assert warning is None
    assert re.search(r'"message": "Hello, x!"', text), text
