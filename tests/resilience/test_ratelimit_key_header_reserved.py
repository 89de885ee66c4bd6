"""``by_metadata`` refuses a header gRPC consumes itself, which no key function sees.

db5e690 refuses a header name no gRPC metadata key can be, because such a name "matched
no call, so every caller was keyed by the fallback (with None, all in one budget: one
busy client spent everyone's limit)". A name in the grammar that grpc core takes for
itself has the same effect: ``grpc-timeout``, ``grpc-encoding``, ``te``,
``content-type`` ... are read by core (gRPC over HTTP/2, PROTOCOL-HTTP2.md: set by gRPC,
``grpc-`` names reserved) and never reach ``invocation_metadata()``, so
``by_metadata("grpc-timeout", fallback=None)`` put every caller in one budget.
Connection-specific headers (RFC 9113 section 8.2.2: a message carrying one is
malformed) cannot reach it either. They are refused quoting the name; a header gRPC
passes on (``user-agent``, ``grpc-foo``) stays accepted.

The first test checks, on a real grpc.aio server, that a call sending each refused name
shows none of them to the application (so the list stays true as grpc changes).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import by_metadata

pytestmark = pytest.mark.timeout(30)

# what grpc core takes for itself (measured with grpcio 1.85: sent, not shown)
MEASURED = ["content-length", "content-type", "grpc-accept-encoding", "grpc-encoding",
            "grpc-internal-encoding-request", "grpc-message", "grpc-previous-rpc-attempts",
            "grpc-timeout", "te"]


async def test_grpc_shows_none_of_them_to_the_application() -> None:
    async def keys(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return ",".join(sorted(k for k, _ in context.invocation_metadata())).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "meshkit.test.Keys", {"Of": grpc.unary_unary_rpc_method_handler(keys)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/meshkit.test.Keys/Of")
            seen = (await call(b"", metadata=(("grpc-foo", "1"),), timeout=10)).decode()
            assert "grpc-foo" in seen.split(",")  # what the check can see
            for name in MEASURED:
                seen = (await call(b"", metadata=((name, "1"),), timeout=10)).decode()
                assert name not in seen.split(","), (name, seen)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("name", [*MEASURED, "Grpc-Timeout", "connection", "upgrade"])
def test_a_header_grpc_consumes_is_refused_quoting_it(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        by_metadata(name, fallback=None)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["user-agent", "grpc-foo", "x-user", "host"])
def test_a_header_grpc_passes_on_stays_accepted(name: str) -> None:
    by_metadata(name, fallback=None)
