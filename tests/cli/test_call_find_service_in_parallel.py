"""``meshkit call /pkg.Svc/Method`` asks the listed services together, so services that
never answer (a stale registry entry of a host gone silent) cost one ``--timeout-s``, not
one each."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest

import meshkit
from meshkit._cli._call import _Args, _run
from meshkit._cli.call import parse_target
from meshkit.discovery import Instance, LocalRegistry
from tests.cli.test_ops_commands import greeter

pytestmark = pytest.mark.timeout(60)

__all__ = ["greeter"]  # the fixture, imported to be used here

_SILENT = 6  # services whose only instance never answers


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says a word (a hung process: the
    HTTP/2 handshake never ends, so a call there waits for its deadline)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


async def test_silent_services_listed_first_cost_one_timeout(
        greeter: meshkit.MeshServer, registry: LocalRegistry, silent_port: int) -> None:
    """The listed services were asked one after another, each waiting its whole
    ``--timeout-s`` when it did not answer: with 6 silent ones listed before the greeter
    (sorted: ``a-silent-*``) and ``--timeout-s 0.5``, the greeter was found after 3 s and
    more (10 s each by default: a minute). They are asked together now, at most
    ``REGISTRY_READS_AT_ONCE`` at once; the first listed that serves it is still the one
    called."""
    for i in range(_SILENT):
        await registry.register(Instance(service=f"a-silent-{i}", instance_id=f"silent-{i}",
                                         host="127.0.0.1", port=silent_port))
    args = _Args(parse_target("/meshkit.clitest.Greeter/SayHello"), '{"name": "x"}',
                 registry, meshkit.DialOptions(insecure=True, telemetry=None), (), 0.5)
    start = time.monotonic()
    text, warning = await _run(args)
    took = time.monotonic() - start
    assert warning is None
    assert re.search(r'"message": "Hello, x!"', text), text
    assert took < 2.5, f"{took:.2f} s: the silent services were asked one at a time"
