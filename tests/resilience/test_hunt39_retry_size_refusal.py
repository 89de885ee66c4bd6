"""A message over a size limit is not retried or hedged, even where the policy retries
``RESOURCE_EXHAUSTED`` (as a caller of a rate-limited service's methods does).

grpc answers a message over a size limit ``RESOURCE_EXHAUSTED`` "... message larger than
max (N vs. M)" (a request over the client's ``grpc.max_send_message_length`` or the
server's ``grpc.max_receive_message_length``, a response over the client's receive
limit, "Decompressed message larger than max" for a gzip message inflating past it):
the same request gets the same refusal from every endpoint. Retried, the call resent the
whole request up to ``max_attempts`` times, and a response over the client's limit had
its handler run that many times (grpc core's own retries commit a call once the server
answered, and once its request is over the 256 KiB retry buffer: it ran once); a hedged
policy sent every hedge at once. Every one of them spent the channel's retry budget. A
quota refusal (``RESOURCE_EXHAUSTED`` from the application) is still retried."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy

_SVC = "hunt39.v1.Sizes"
_LIMIT = 64 * 1024
_EX = grpc.StatusCode.RESOURCE_EXHAUSTED
_ATTEMPTS = 4


def _handlers(hits: list[str]) -> dict[str, grpc.RpcMethodHandler]:
    async def length(request: bytes, context: Any) -> bytes:
        hits.append("Length")
        return str(len(request)).encode()

    async def zeros(request: bytes, context: Any) -> bytes:
        hits.append("Zeros")
        return b"\0" * int(request)

    async def zeros_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        hits.append("ZerosStream")
        yield b"\0" * int(request)

    async def quota(request: bytes, context: Any) -> bytes:
        hits.append("Quota")
        await context.abort(_EX, "quota exceeded")
        raise AssertionError("unreachable")

    return {
        "Length": grpc.unary_unary_rpc_method_handler(length),
        "Zeros": grpc.unary_unary_rpc_method_handler(zeros),
        "ZerosStream": grpc.unary_stream_rpc_method_handler(zeros_stream),
        "Quota": grpc.unary_unary_rpc_method_handler(quota),
    }


def _m(name: str) -> str:
    return f"/{_SVC}/{name}"


async def _ends(call: Any) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("hedged", [False, True], ids=["retried", "hedged"])
async def test_size_refusals_are_not_sent_again(registry: LocalRegistry, hedged: bool) -> None:
    hits: list[str] = []
    server = grpc.aio.server(options=(("grpc.max_receive_message_length", _LIMIT),))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SVC, _handlers(hits)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await registry.register(Instance(service="sizes", instance_id="s1", host="127.0.0.1",
                                     port=port))
    policy = RetryPolicy(retryable_codes={grpc.StatusCode.UNAVAILABLE, _EX}, idempotent=True,
                         max_attempts=_ATTEMPTS, hedge_delay_s=5.0 if hedged else None)
    ch = meshkit.dial("sizes", registry=registry, options=meshkit.DialOptions(
        insecure=True, retry=RetryOptions(default=policy),
        channel_options=(("grpc.max_send_message_length", 4 * _LIMIT),
                         ("grpc.max_receive_message_length", _LIMIT))))
    try:
        # the application's RESOURCE_EXHAUSTED: retried (hedged at once) to max_attempts
        assert await _ends(ch.unary_unary(_m("Quota"))(b"", timeout=30)) == (
            _EX, "quota exceeded")
        assert hits == ["Quota"] * _ATTEMPTS
        hits.clear()
        retry = ch.stats().retry
        sent_again = retry.retries + retry.hedges
        assert sent_again == _ATTEMPTS - 1

        length = ch.unary_unary(_m("Length"))
        cases: dict[str, tuple[Callable[[], Any], str]] = {
            "request over the server's limit": (
                lambda: length(b"x" * (_LIMIT + 1), timeout=30),
                f"SERVER: Received message larger than max ({_LIMIT + 1} vs. {_LIMIT})"),
            "request over the client's send limit": (
                lambda: length(b"x" * (4 * _LIMIT + 1), timeout=30),
                f"CLIENT: Sent message larger than max ({4 * _LIMIT + 1} vs. {4 * _LIMIT})"),
            "gzip request inflating past the server's limit": (
                lambda: length(b"\0" * (4 * _LIMIT), timeout=30,
                               compression=grpc.Compression.Gzip),
                "Decompressed message larger than max"),
            "response over the client's limit": (
                lambda: ch.unary_unary(_m("Zeros"))(str(_LIMIT + 1).encode(), timeout=30),
                f"Received message larger than max ({_LIMIT + 1} vs. {_LIMIT})"),
        }
        for name, (call, words) in cases.items():  # one at a time
            code, details = await _ends(call())
            assert code is _EX and details is not None and words in details, (name, details)
            retry = ch.stats().retry
            assert retry.retries + retry.hedges == sent_again, name
        assert hits == ["Zeros"]  # the handler ran once
        # a stream whose first message is over the client's limit (a hedged policy
        # retries streams as a retry policy does)
        stream = ch.unary_stream(_m("ZerosStream"))(str(_LIMIT + 1).encode(), timeout=30)
        code, details = await _ends(stream.read())
        assert code is _EX and details is not None and "larger than max" in details
        assert hits == ["Zeros", "ZerosStream"]
        retry = ch.stats().retry
        assert retry.retries + retry.hedges == sent_again
    finally:
        await ch.close()
        await server.stop(None)
