"""Metadata given as a ``dict`` of ``StrEnum`` or ``bytes`` keys (review of c70b5b89).

c70b5b89 refused a ``str`` in place of a ``(key, value)`` pair (metadata given as a dict,
whose keys the channel's ``list(metadata)`` keeps) with a check of ``type(item) is str``.
A dict keyed by a ``StrEnum`` of header names (``class Header(StrEnum): TENANT =
"x-tenant"``, a common way to keep header names in one place) or by ``bytes`` keys
(grpc's API takes ``bytes`` keys) passed that check and met the old unpacking: a key of
two characters still went out split into a key and a value, its value lost without a
word (``{Header.AB: token}`` reached the server as ``a: b``), and a longer one raised a
bare ``ValueError: too many values to unpack`` (a ``bytes`` pair of two: "metadata key of
type int"). Both are now :class:`~meshkit.errors.InvalidMetadataError` (``INTERNAL``)
saying to pass ``dict.items()``, nothing sent; each with the default retry options and
without retries."""

from __future__ import annotations

import enum
from typing import Any

import grpc
import pytest

import meshkit
from meshkit._metadata import check_metadata
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import InvalidMetadataError

_SECRET = "s3cret-token"
_SEEN: list[tuple[tuple[str, Any], ...]] = []


class _Header(enum.StrEnum):
    AB = "ab"
    TENANT = "x-tenant"


async def _md(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    _SEEN.append(tuple((k, v) for k, v in context.invocation_metadata()
                       if k != "user-agent"))
    return b"ok"


async def _md_stream(request: bytes, context: Any) -> Any:
    _SEEN.append(tuple((k, v) for k, v in context.invocation_metadata()
                       if k != "user-agent"))
    yield b"ok"


_HANDLER = grpc.method_handlers_generic_handler("r.Md", {
    "Unary": grpc.unary_unary_rpc_method_handler(_md),
    "Stream": grpc.unary_stream_rpc_method_handler(_md_stream),
})

CASES = [
    ({_Header.AB: _SECRET}, "'ab'", {}),
    ({_Header.TENANT: _SECRET}, "'x-tenant'", {}),
    ({_Header.AB: _SECRET}, "'ab'", {"retry": None}),
    ({b"ab": _SECRET.encode()}, "b'ab'", {}),
    ({b"x-tenant": _SECRET.encode()}, "b'x-tenant'", {"retry": None}),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("md", "named", "options"), CASES,
                         ids=["enum-two-letter", "enum-key", "enum-two-letter-no-retry",
                              "bytes-two-letter", "bytes-key-no-retry"])
async def test_a_dict_of_enum_or_bytes_keys_is_refused_and_nothing_is_sent(
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
            unary = ch.unary_unary("/r.Md/Unary")
            assert await unary(b"", timeout=10, metadata=(("x-ok", "v"),)) == b"ok"
            _SEEN.clear()
            for _ in range(2):  # (a key once seen legal is remembered: still refused)
                with pytest.raises(InvalidMetadataError) as err:
                    await unary(b"", timeout=10, metadata=md)
                assert err.value.code() is grpc.StatusCode.INTERNAL
                text = err.value.details() or ""
                assert named in text and "dict.items()" in text, text
                assert _SECRET not in str(err.value)
            with pytest.raises(InvalidMetadataError, match=r"dict\.items\(\)"):
                async for _ in ch.unary_stream("/r.Md/Stream")(b"", timeout=10, metadata=md):
                    pass
            assert _SEEN == [], "a call went out with the dict's keys split into pairs"
            st = ch.stats()
            assert [(e.in_flight, e.failures) for e in st.endpoints] == [(0, 0)]
            # the dict's items go through
            assert await unary(b"", timeout=10, metadata=tuple(md.items())) == b"ok"
            assert len(_SEEN) == 1
    finally:
        await server.stop(None)


def test_check_metadata_refuses_a_str_subclass_or_bytes_in_place_of_a_pair() -> None:
    for md in (list({_Header.AB: "v"}), [_Header.TENANT], [b"ab"], [b"x-tenant"],
               [("x-ok", "v"), bytearray(b"ab")]):
        with pytest.raises(InvalidMetadataError, match=r"dict\.items\(\)"):
            check_metadata(md, request=True)
    # pairs of other sequence types are unpacked as before
    check_metadata([["x-ok", "v"], (_Header.TENANT, "t"), (b"x-b", b"v")], request=True)
    with pytest.raises(ValueError, match="unpack"):
        check_metadata([("x-a", "b", "c")], request=True)
