"""Auth test fixtures: a PKI in tmp_path, a JWT key set, and real in-process grpc.aio servers."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshkit.auth import (
    IssuerOptions,
    KeySet,
    TLSOptions,
    TokenIssuer,
    current_claims,
    current_peer,
    init_ca_dir,
    issue_into_dir,
)

TD = "meshkit.test"
SERVICE = "test.Auth"
ISSUER = "https://userd.meshkit.test"
AUDIENCE = "ecom"


def method(name: str) -> str:
    """Full method path of ``name`` on the test service."""
    return f"/{SERVICE}/{name}"


@dataclass
class Pki:
    """A CA directory with helpers to issue workload certificates into it."""

    dir: Path

    def issue(self, service: str, *, ttl_h: float = 1.0, now: dt.datetime | None = None,
              overwrite: bool = False) -> TLSOptions:
        """Issue ``service`` a certificate (SANs localhost/127.0.0.1) and return its options."""
        files = issue_into_dir(self.dir, service, ttl_h=ttl_h, dns=("localhost",),
                               ips=("127.0.0.1",), now=now, overwrite=overwrite)
        return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                          key_file=files.key_file, reload_interval_s=0.05)

    def options(self, service: str, **kw: Any) -> TLSOptions:
        """Options over ``service``'s existing files."""
        return TLSOptions(ca_file=self.dir / "ca.pem", cert_file=self.dir / f"{service}.pem",
                          key_file=self.dir / f"{service}.key", **kw)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh mesh CA for trust domain ``meshkit.test`` in tmp_path."""
    init_ca_dir(tmp_path / "pki", trust_domain=TD, ttl_days=2)
    return Pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    """A second, unrelated CA for the same trust domain name."""
    init_ca_dir(tmp_path / "other", trust_domain=TD, ttl_days=2)
    return Pki(tmp_path / "other")


@pytest.fixture
def keys() -> KeySet:
    """A fresh ES256 key set."""
    return KeySet.generate("ES256")


@pytest.fixture
def issuer(keys: KeySet) -> TokenIssuer:
    """A token issuer over ``keys``."""
    return TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=300))


def _describe() -> bytes:
    peer = current_peer()
    claims = current_claims()
    return f"{peer.spiffe_id if peer else '-'}|{claims.subject if claims else '-'}".encode()


Relay = Callable[[bytes], Awaitable[bytes]]


def auth_handler(relay: Relay | None = None) -> grpc.GenericRpcHandler:
    """The test service: every method answers ``<peer SPIFFE ID or ->|<token sub or ->``.

    ``Relay`` forwards its request through ``relay`` (an outgoing call) and answers that.
    """

    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return _describe()

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield _describe()

    async def relay_call(request: bytes, context: Any) -> bytes:
        assert relay is not None
        return await relay(request)

    unary_names = ("Public", "Read", "Write", "Admin", "Whoami")
    handlers: dict[str, Any] = {
        n: grpc.unary_unary_rpc_method_handler(unary) for n in unary_names
    }
    handlers["Stream"] = grpc.unary_stream_rpc_method_handler(stream)
    handlers["Relay"] = grpc.unary_unary_rpc_method_handler(relay_call)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


StartServer = Callable[..., Awaitable[int]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start grpc.aio servers on 127.0.0.1:0; returns the port; all stopped at teardown."""
    servers: list[grpc.aio.Server] = []

    async def start(credentials: grpc.ServerCredentials | None = None,
                    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                    relay: Relay | None = None) -> int:
        server = grpc.aio.server(interceptors=tuple(interceptors) or None)
        server.add_generic_rpc_handlers((auth_handler(relay),))
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        servers.append(server)
        return port

    yield start
    for s in servers:
        await s.stop(0)


async def call(port: int, name: str = "Whoami", *, credentials: grpc.ChannelCredentials | None,
               options: Sequence[tuple[str, Any]] = (),
               metadata: Sequence[tuple[str, str]] | None = None,
               timeout_s: float = 3.0) -> bytes:
    """One unary call to the test service on ``127.0.0.1:port``; raises AioRpcError."""
    target = f"127.0.0.1:{port}"
    if credentials is None:
        ch = grpc.aio.insecure_channel(target, options=tuple(options))
    else:
        ch = grpc.aio.secure_channel(target, credentials, options=tuple(options))
    async with ch:
        mc: Any = ch.unary_unary(method(name))
        result: bytes = await mc(b"", timeout=timeout_s, metadata=metadata)
        return result


async def rpc_error(coro: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await ``coro``, which must fail with an RPC error; return the error."""
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")
