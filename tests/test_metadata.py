"""Request metadata gRPC cannot send, against real servers: the caller gets a clear
``INTERNAL`` error naming the key (never the value), the call reaches no endpoint, and the
balancer, outlier ejection and retries are left as they were."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import LocalRegistry
from meshkit.errors import (
    InvalidMetadataError,
    RequestSerializationError,
    ResponseDeserializationError,
)
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method

_SECRET = "s3cr3t-value"

# (metadata, what the error message must name)
BAD: list[tuple[tuple[tuple[str, Any], ...], str]] = [
    ((("Bad Key", "v"),), "metadata key of 7 characters (not quoted: it holds ' ')"),
    # a pair swapped, a credential in the key's place: described, never quoted
    (((f"Bearer {_SECRET}", "authorization"),), "(not quoted: it holds ' ')"),
    (((f"{_SECRET}\u00e9", "x-token"),), "(not quoted: it holds non-ASCII characters)"),
    ((("x-upper-Case", "v"),), "'x-upper-Case'"),
    ((("", "v"),), "''"),
    ((("x-ok", "v"), (":path", "/x")), "':path'"),
    ((("x-token", f"{_SECRET}\n"),), "'x-token'"),
    ((("x-token", f"{_SECRET}\u00e9"),), "'x-token'"),
    ((("x-token", f"{_SECRET}\r\n".encode()),), "'x-token'"),
    ((("x-trace-bin", _SECRET),), "'x-trace-bin'"),
    ((("x-count", 7),), "'x-count'"),
]


def _opts(**kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, **kw)


def _pending(ch: meshkit.MeshChannel) -> list[tuple[int, int | None, int, bool]]:
    return [(e.in_flight, e.pending, e.failures, e.ejected) for e in ch.stats().endpoints]


@pytest.mark.parametrize(("md", "named"), BAD)
async def test_bad_metadata_fails_the_call_internal_naming_the_key(
    registry: LocalRegistry, echo_servers: EchoFactory,
    md: tuple[tuple[str, Any], ...], named: str,
) -> None:
    """grpc core refuses these keys and values (gRPC's HTTP/2 spec: keys of
    ``[0-9a-z-_.]``, ASCII-printable values, bytes for ``-bin`` keys); meshkit says so as
    grpc-go does (``INTERNAL``), quoting the key (one of a key's shape; another, such as a
    credential in a swapped pair, is described unquoted) and never the value, before any
    endpoint is picked: P2C's pending count and the endpoint's counters stay at zero."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        unary = ch.unary_unary(method("Unary"))
        assert await unary(b"warm", timeout=5) == b"e1|warm"
        before = _pending(ch)
        for _ in range(3):
            with pytest.raises(InvalidMetadataError) as err:
                await unary(b"x", timeout=5, metadata=md)
            assert err.value.code() is grpc.StatusCode.INTERNAL
            assert named in (err.value.details() or "")
            assert _SECRET not in str(err.value) and _SECRET not in repr(err.value)
        assert _pending(ch) == before == [(0, 0, 0, False)]
        # the channel still serves, the picks still spread
        assert await unary(b"y", timeout=5, metadata=(("x-ok", "v"),)) == b"e1|y"


async def test_bad_metadata_on_streams_and_through_interceptors(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """The same check covers the streaming kinds and metadata an interceptor adds."""
    from meshkit.interceptors import ClientCallDetails, ClientInterceptor, UnaryProceed

    class AddBad(ClientInterceptor):
        async def intercept_unary(self, details: ClientCallDetails, request: Any,
                                  proceed: UnaryProceed) -> Any:
            details.metadata = [*(details.metadata or ()), ("X-Added", "v")]
            return await proceed(details, request)

    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        await ch.wait_for_endpoints(1)
        stream = ch.unary_stream(method("ServerStream"))
        with pytest.raises(InvalidMetadataError, match="key of 7 characters"):
            async for _ in stream(b"2", timeout=5, metadata=(("Bad Key", "v"),)):
                pass
        bidi = ch.stream_stream(method("Bidi"))
        call = bidi(iter([b"a"]), timeout=5, metadata=(("x-bin", "text"),))
        with pytest.raises(InvalidMetadataError, match="'x-bin'"):
            async for _ in call:
                pass
        assert _pending(ch) == [(0, 0, 0, False)]
    async with meshkit.dial("echo", registry=registry,
                            options=_opts(interceptors=(AddBad(),))) as ch:
        await ch.wait_for_endpoints(1)
        with pytest.raises(InvalidMetadataError, match="'X-Added'"):
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert _pending(ch) == [(0, 0, 0, False)]


async def test_bad_metadata_is_not_retried_nor_ejects(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Even with INTERNAL retryable and ejection after one failure, a call with bad
    metadata makes no attempt, no retry and ejects nothing: it is the caller's error,
    not an endpoint's."""
    await echo_servers("e1")
    await echo_servers("e2")
    policy = RetryPolicy(idempotent=True, max_attempts=3,
                         retryable_codes=frozenset({grpc.StatusCode.INTERNAL,
                                                    grpc.StatusCode.UNAVAILABLE}))
    opts = _opts(retry=RetryOptions(default=policy),
                 outlier=OutlierOptions(consecutive_failures=1))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(5):
            with pytest.raises(InvalidMetadataError):
                await unary(b"x", timeout=5, metadata=(("x-k", "bad\x00"),))
        assert ch.retry is not None and ch.retry.stats.retries == 0
        st = ch.stats()
        assert st.ejections == 0
        assert [(e.calls, e.failures, e.pending) for e in st.endpoints] == [(0, 0, 0)] * 2


async def test_legal_metadata_passes_unchanged(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Keys with digits, ``-``, ``_`` and ``.``, binary values with any byte, bytes values
    on text keys and an empty value all reach the server as sent."""
    seen: list[tuple[tuple[str, Any], ...]] = []

    async def record(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(tuple(context.invocation_metadata() or ()))
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Md", {"Get": grpc.unary_unary_rpc_method_handler(record)})
    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((handler,))

    srv = meshkit.MeshServer("md", [(add, None)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0))
    await srv.start()
    try:
        md = (("a.b_c-9", "v ~!"), ("x-bin", bytes(range(256))), ("x-b", b"text"),
              ("x-empty", ""))
        async with meshkit.dial("md", registry=registry, options=_opts()) as ch:
            assert await ch.unary_unary("/test.Md/Get")(b"r", timeout=5, metadata=md) == b"r"
        got = dict(seen[0])
        assert got["a.b_c-9"] == "v ~!"
        assert got["x-bin"] == bytes(range(256))
        assert got["x-b"] == "text"
        assert got["x-empty"] == ""
    finally:
        await srv.drain()


def _bad_serializer(_request: Any) -> bytes:
    raise ValueError(f"cannot serialise {_SECRET}")


async def test_requests_that_cannot_be_serialized_fail_before_the_pick(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A request its serializer refuses (or, without one, a request that is not bytes) is
    the caller's error: ``INTERNAL`` naming the exception type (not its text, which may
    hold a field's value), the cause chained, no attempt, no retry, nothing ejected and
    P2C's pending count untouched (it used to reach grpc.aio, which counted an endpoint
    failure for the serializer's error, or leave the pick pending for a ``TypeError``)."""
    await echo_servers("e1")
    await echo_servers("e2")
    policy = RetryPolicy(idempotent=True, max_attempts=3,
                         retryable_codes=frozenset({grpc.StatusCode.INTERNAL}))
    opts = _opts(retry=RetryOptions(default=policy),
                 outlier=OutlierOptions(consecutive_failures=1))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        calls: list[tuple[Any, bool]] = [
            (lambda: ch.unary_unary(method("Unary"), request_serializer=_bad_serializer)(
                b"x", timeout=5), True),
            (lambda: ch.unary_unary(method("Unary"))("not bytes", timeout=5), False),
            (lambda: _drain(ch.unary_stream(method("ServerStream"),
                                            request_serializer=_bad_serializer)(
                b"2", timeout=5)), True),
            (lambda: _drain(ch.unary_stream(method("ServerStream"))(2, timeout=5)), False),
            (lambda: ch.unary_unary(method("Unary"), request_serializer=lambda r: "text")(
                b"x", timeout=5), False),
        ]
        for make, raised in calls:
            for _ in range(3):
                with pytest.raises(RequestSerializationError) as err:
                    await make()
                assert err.value.code() is grpc.StatusCode.INTERNAL
                assert _SECRET not in str(err.value)
                assert (err.value.__cause__ is not None) is raised
        assert ch.retry is not None and ch.retry.stats.retries == 0
        st = ch.stats()
        assert st.ejections == 0
        assert [(e.calls, e.failures, e.pending) for e in st.endpoints] == [(0, 0, 0)] * 2
        assert await ch.unary_unary(method("Unary"))(b"ok", timeout=5) in (b"e1|ok", b"e2|ok")


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


@pytest.mark.parametrize("attempt_interceptors", [(), (PassAll(),)],
                         ids=["in-mesh", "attempt-interceptors"])
async def test_a_response_that_cannot_be_deserialized_fails_internal(
    registry: LocalRegistry, echo_servers: EchoFactory, attempt_interceptors: Any
) -> None:
    """grpc.aio hands the caller ``None`` for a unary response its deserializer refuses;
    a meshkit call fails ``INTERNAL`` instead (the answering endpoint's failure: counted
    against it), with the deserializer's exception as the cause; also where grpc.aio
    runs the codecs (a channel with attempt interceptors)."""
    await echo_servers("e1")

    def bad(_raw: bytes) -> Any:
        raise ValueError(_SECRET)

    async with meshkit.dial("echo", registry=registry, options=_opts(
            retry=None, attempt_interceptors=attempt_interceptors)) as ch:
        with pytest.raises(ResponseDeserializationError) as err:
            await ch.unary_unary(method("Unary"), response_deserializer=bad)(b"x", timeout=5)
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert isinstance(err.value.__cause__, ValueError)
        assert _SECRET not in str(err.value)
        assert _pending(ch) == [(0, 0, 1, False)]


async def test_stubs_of_one_method_with_other_codecs_keep_their_own(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Two multicallables of one method with different codecs on one channel each use
    their own (the sub-channel's multicallable was cached by method name alone, so the
    second used the first's serializer)."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        plain = ch.unary_unary(method("Unary"))
        upper = ch.unary_unary(method("Unary"), request_serializer=lambda r: r.upper(),
                               response_deserializer=lambda b: b.decode())
        typed = ch.unary_unary(method("Unary"), request_serializer=str.encode)
        assert await plain(b"a", timeout=5) == b"e1|a"
        assert await upper(b"b", timeout=5) == "e1|B"
        assert await typed("c", timeout=5) == b"e1|c"
        assert await plain(b"d", timeout=5) == b"e1|d"
        stream = ch.unary_stream(method("ServerStream"), request_serializer=str.encode)
        assert [m async for m in stream("2", timeout=5)] == [b"e1|0", b"e1|1"]


async def test_an_argument_grpc_refuses_leaves_no_pick_pending(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """grpc refuses some arguments only when the attempt starts (call credentials on a
    plaintext channel: grpc's ``UsageError``); the pick is then given back, not left
    pending for P2C to count forever."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(3):
            with pytest.raises(Exception, match="only valid on secure channels"):
                await unary(b"x", timeout=5, credentials=grpc.access_token_call_credentials(
                    "t"))
        assert [(e.in_flight, e.pending, e.failures) for e in ch.stats().endpoints] == \
            [(0, 0, 0)]
        assert await unary(b"y", timeout=5) == b"e1|y"


def test_check_metadata_rules_without_a_server() -> None:
    """The pure check: bytes keys are held to the same rules, other key types are refused,
    a str subclass value is checked as its text, and the remembered keys stay bounded."""
    from meshkit import _metadata
    from meshkit._metadata import check_metadata

    check_metadata([(b"x-bytes-key", "v"), (b"x-b-bin", b"\x00"), ("x-sub", _Text("ok"))])
    for md, named in (([(b"Bad", "v")], "b'Bad'"), ([(7, "v")], "key of type int"),
                      ([("x-sub", _Text("bad\n"))], "'x-sub'"),
                      ([("x-bytes", b"\xff")], "'x-bytes'")):
        with pytest.raises(InvalidMetadataError, match=named) as err:
            check_metadata(md)
        assert err.value.code() is grpc.StatusCode.INTERNAL
    with pytest.raises(ValueError):
        check_metadata([("x-only-key",)])  # type: ignore[list-item]
    for i in range(_metadata._MAX_KEYS + 10):
        check_metadata([(f"x-k{i}", "v")])
    assert len(_metadata._KEYS) <= _metadata._MAX_KEYS


def test_a_text_value_is_legal_exactly_when_every_character_is_printable_ascii() -> None:
    """0x20-0x7E and nothing else, at the start, middle or end of a value (the check is a
    ``bytes.translate`` of the value, not ``str.isprintable``): control characters, DEL,
    Latin-1 and other non-ASCII characters are refused, the value never quoted."""
    from meshkit._metadata import check_metadata

    for cp in [*range(0x100), 0x2028, 0x20AC, 0x1F600]:
        for value in (chr(cp), f"a{chr(cp)}", f"{chr(cp)}b" * 3, "x" * 400 + chr(cp)):
            if 0x20 <= cp <= 0x7E:
                check_metadata([("x-text", value)])
                continue
            with pytest.raises(InvalidMetadataError, match="'x-text'") as err:
                check_metadata([("x-text", value)])
            assert len(value) < 4 or value not in str(err.value)
    check_metadata([("x-empty", "")])


class _Text(str):
    """A str subclass (e.g. an enum's value type) as a metadata value."""


async def test_codec_pairs_past_the_bound_start_the_cache_over(
    registry: LocalRegistry, echo_servers: EchoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codecs made per stub (a new lambda each time) cannot grow the endpoints'
    multicallable caches without bound: past the bound they start over, and every stub,
    old or new, still uses its own codecs."""
    import meshkit.channel as channel_mod

    monkeypatch.setattr(channel_mod, "_MAX_PLAN_KEYS", 3)
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        stubs = [ch.unary_unary(method("Unary"),
                                request_serializer=lambda r, n=n: f"{r}{n}".encode())
                 for n in range(6)]
        for n, stub in enumerate(stubs):
            assert await stub("r", timeout=5) == f"e1|r{n}".encode()
        assert await stubs[0]("again", timeout=5) == b"e1|again0"
        assert len(ch._plan_keys) <= 3
        assert all(len(c.callables) <= 3 for c in ch._conns.values())


async def test_codecs_with_compression_and_with_attempt_interceptors(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """The mesh's codecs hold on grpc.aio's public path too: a call with compression (the
    sub-channel still carries bytes) and a channel with attempt interceptors (grpc.aio
    keeps the codecs; the mesh serializes once more only to check)."""
    from tests.test_inline import _PassAttempt

    await echo_servers("e1")
    for opts in (_opts(), _opts(attempt_interceptors=(_PassAttempt(),))):
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            unary = ch.unary_unary(method("Unary"), request_serializer=str.encode,
                                   response_deserializer=bytes.decode)
            assert await unary("a", timeout=5, compression=grpc.Compression.Gzip) == "e1|a"
            assert await unary("b", timeout=5) == "e1|b"
            with pytest.raises(RequestSerializationError):
                await unary(b"not str", timeout=5)


async def test_a_servers_checks_read_a_calls_metadata_once_and_only_that_calls() -> None:
    """``call_metadata`` hands every check of a call the one tuple grpc.aio built for it
    (grpc.aio builds a new one on every ``invocation_metadata()``), and the next call its
    own: the value lives in the call's task, keyed by the call's context."""
    from meshkit._metadata import call_metadata

    seen: list[tuple[Any, Any, Any]] = []

    async def handler(request: bytes, context: Any) -> bytes:
        first, again = call_metadata(context), call_metadata(context)
        seen.append((first, again, context.invocation_metadata()))
        return b"ok"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.M", {"Read": grpc.unary_unary_rpc_method_handler(handler)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for user in ("u1", "u2"):
                await ch.unary_unary("/t.M/Read")(b"x", metadata=(("x-user", user),),
                                                  timeout=5)
    finally:
        await server.stop(None)
    (a1, a2, fresh_a), (b1, b2, fresh_b) = seen
    assert a1 is a2 and b1 is b2 and a1 is not b1  # one read per call, each its own
    assert a1 == fresh_a and b1 == fresh_b and fresh_a is not a1  # built anew on a read
    assert ("x-user", "u1") in a1 and ("x-user", "u2") in b1


def test_logged_metadata_shows_bytes_as_text_and_every_value_of_a_repeated_key() -> None:
    """An access log's ``md``: only the named keys; a ``bytes`` key or value as text (a byte
    outside ASCII escaped); a repeated key as the list of its values, in order."""
    from meshkit._metadata import logged_metadata

    md = [("x-user", "alice"), (b"x-tenant", b"acme"), ("authorization", "t"),
          ("x-user", b"b\xffb"), ("x-user", "carol"), ("x-odd", 3)]
    assert logged_metadata(md, ("x-user", "x-tenant", "x-odd")) == {
        "x-user": ["alice", "b\\xffb", "carol"], "x-tenant": "acme"}
    assert logged_metadata(md, ("x-other",)) is None
