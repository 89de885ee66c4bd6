"""Request metadata given as a ``dict`` (or as header lines) was sent as its keys' letters.

gRPC's Python API takes metadata as ``(key, value)`` pairs; ``metadata={"authorization":
"Bearer ..."}`` is the commonest slip (what ``requests``/``aiohttp`` take). The channel
copies the metadata with ``list(metadata)``: a dict's *keys*, each a ``str`` that the
check then unpacked as if it were a pair. A key of two characters was split into a key and
a value and the call went out with that metadata, the value lost without a word
(``{"ab": "zz"}`` reached the server as ``a: b``, the token of ``{"ab": token}`` never
sent); a longer one raised a bare ``ValueError: too many values to unpack (expected 2)``
naming nothing (plain grpc.aio does the same, a point the mesh's own check is there to
make clear). ``["authorization: Bearer ..."]`` (header lines) did likewise.

Now a ``str`` where a pair belongs is :class:`~meshkit.errors.InvalidMetadataError`
(``INTERNAL``, as other metadata gRPC cannot send), before the pick, saying to pass
``dict.items()``; the string is quoted only when it has a key's shape (a header line,
which may hold a credential, is described unquoted).

With the default retry options the retry interceptor reads the idempotency key out of
``details.metadata`` as pairs (``_has_key``) when an attempt fails (this refusal is an
``AioRpcError``) and when a unary-stream call opens: a dict whose keys are longer than two
characters ended in its bare ``ValueError`` there, until ``_has_key`` skipped what is not
pairs (the call's own refusal then says what is wrong); each case runs with and without
retries."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit._metadata import check_metadata
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import InvalidMetadataError

_SECRET = "s3cret-token"
_SEEN: list[tuple[tuple[str, Any], ...]] = []


async def _md(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    _SEEN.append(tuple((k, v) for k, v in context.invocation_metadata()
                       if k != "user-agent"))
    return b"ok"


async def _md_stream(request: bytes, context: Any) -> Any:
    _SEEN.append(tuple((k, v) for k, v in context.invocation_metadata()
                       if k != "user-agent"))
    yield b"ok"


_HANDLER = grpc.method_handlers_generic_handler("w1.Md", {
    "Unary": grpc.unary_unary_rpc_method_handler(_md),
    "Stream": grpc.unary_stream_rpc_method_handler(_md_stream),
})

_NO_RETRY: dict[str, Any] = {"retry": None}
CASES = [
    ({"ab": "zz"}, "'ab'", {}),
    ({"ab": _SECRET}, "'ab'", {}),
    ({"ab": "zz"}, "'ab'", _NO_RETRY),
    ({"authorization": f"Bearer {_SECRET}"}, "'authorization'", _NO_RETRY),
    ([f"authorization: Bearer {_SECRET}"], "key of", _NO_RETRY),
    ({"authorization": f"Bearer {_SECRET}"}, "'authorization'", {}),
    ([f"authorization: Bearer {_SECRET}"], "key of", {}),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("md", "named", "options"), CASES,
                         ids=["two-letter-key", "two-letter-key-secret",
                              "two-letter-key-no-retry", "dict-no-retry",
                              "header-line-no-retry", "dict", "header-line"])
async def test_metadata_as_a_dict_is_refused_naming_it_and_nothing_is_sent(
    registry: LocalRegistry, md: Any, named: str, options: dict[str, Any],
) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_HANDLER,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await registry.register(
            Instance(service="md", instance_id="m1", host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(insecure=True, **options)
        async with meshkit.dial("md", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            unary = ch.unary_unary("/w1.Md/Unary")
            assert await unary(b"", timeout=10, metadata=(("x-ok", "v"),)) == b"ok"
            _SEEN.clear()
            for _ in range(2):  # (a key once seen legal is remembered: still refused)
                with pytest.raises(InvalidMetadataError) as err:
                    await unary(b"", timeout=10, metadata=md)
                assert err.value.code() is grpc.StatusCode.INTERNAL
                text = err.value.details() or ""
                assert named in text and "dict.items()" in text, text
                assert _SECRET not in str(err.value) and _SECRET not in repr(err.value)
            with pytest.raises(InvalidMetadataError, match=r"dict\.items\(\)"):
                async for _ in ch.unary_stream("/w1.Md/Stream")(b"", timeout=10, metadata=md):
                    pass
            assert _SEEN == [], "a call went out with the dict's keys split into pairs"
            st = ch.stats()
            assert [(e.in_flight, e.failures) for e in st.endpoints] == [(0, 0)]
            # pairs (a dict's items) go through as they are
            if isinstance(md, dict):
                assert await unary(b"", timeout=10, metadata=tuple(md.items())) == b"ok"
                assert [tuple(md.items())] == _SEEN
    finally:
        await server.stop(None)


def test_check_metadata_refuses_a_str_in_place_of_a_pair() -> None:
    for md in (list({"ab": "v"}), ["x-a"], [("x-ok", "v"), "ab"]):
        with pytest.raises(InvalidMetadataError, match=r"dict\.items\(\)"):
            check_metadata(md, request=True)
        with pytest.raises(InvalidMetadataError, match=r"dict\.items\(\)"):
            check_metadata(md)
    # the legal one-character pair a two-letter key was split into stays legal
    check_metadata([("a", "b")], request=True)
