"""Where the order service fetches the user service's JWKS from
(``order_service.jwks_url_from``).

It took the first user-service endpoint by instance id, every time: with that instance
dead but still listed (SIGKILLed or OOM-killed before its registration lapsed, or hung),
every fetch went to it, so an order service starting then (or meeting a new key) refused
every token UNAUTHENTICATED although the other instances serve the same keys. The
provider now prefers the endpoints whose connection works and takes them in turn, so a
failed fetch's retry asks another instance.
"""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from examples.ecom.order_service import jwks_url_from
from meshkit.auth import JWKSClient, JWKSClientOptions, JWKSError, JWKSServer, KeySet
from meshkit.balancer import Endpoint, EndpointState
from meshkit.discovery import Instance

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoint(instance_id: str, jwks_port: int, state: EndpointState) -> Endpoint:
    ep = Endpoint(Instance(service="userd", instance_id=instance_id, host="127.0.0.1",
                           port=_closed_port(), meta={"jwks_port": str(jwks_port)}))
    ep.state = state
    return ep


def _channel(*endpoints: Endpoint) -> Any:
    """What jwks_url_from reads of a MeshChannel: its endpoints, sorted by instance id."""
    return SimpleNamespace(endpoints=lambda: sorted(endpoints, key=lambda e: e.key))


def test_a_failing_endpoint_is_passed_over_for_a_working_one() -> None:
    dead = _endpoint("userd-1", 1111, EndpointState.FAILING)
    alive = _endpoint("userd-2", 2222, EndpointState.READY)
    url = jwks_url_from(_channel(dead, alive))
    assert {url() for _ in range(4)} == {"http://127.0.0.1:2222/.well-known/jwks.json"}


def test_endpoints_alike_are_taken_in_turn() -> None:
    url = jwks_url_from(_channel(_endpoint("userd-1", 1111, EndpointState.IDLE),
                                 _endpoint("userd-2", 2222, EndpointState.IDLE)))
    assert {url() for _ in range(4)} == {"http://127.0.0.1:1111/.well-known/jwks.json",
                                         "http://127.0.0.1:2222/.well-known/jwks.json"}


async def test_a_fetch_failing_on_a_dead_instance_is_retried_on_another(
        tmp_path: Path) -> None:
    """userd-1 is listed but its JWKS port refuses (not yet known to fail: IDLE); the
    first fetch fails there, the next one reaches userd-2's real JWKS server."""
    keys = KeySet.from_directory(tmp_path / "jwt")
    server = JWKSServer(keys)
    port = await server.start("127.0.0.1", 0)
    client = JWKSClient(jwks_url_from(_channel(
        _endpoint("userd-1", _closed_port(), EndpointState.IDLE),
        _endpoint("userd-2", port, EndpointState.IDLE))),
        JWKSClientOptions(min_refresh_interval_s=0, fetch_timeout_s=5))
    try:
        with pytest.raises(JWKSError):  # the dead instance refuses
            await client.refresh()
        await client.refresh()
        assert keys.current.kid in client.kids
    finally:
        await client.close()
        await server.stop()
