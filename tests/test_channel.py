"""The balanced channel against real in-process grpc.aio servers on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor
from meshkit.observability import live_channel_stats, live_server_stats
from tests.conftest import EchoFactory
from tests.support import grpc_plugin
from tests.support.echo import SERVICE, handler, method, raw_server
from tests.support.wait import until


def stubs(channel: grpc.aio.Channel) -> dict[str, Any]:
    """Multicallables for each echo method, built as a generated stub would."""
    return {
        "unary": channel.unary_unary(method("Unary"), _registered_method=True),
        "sleep": channel.unary_unary(method("Sleep"), _registered_method=True),
        "fail": channel.unary_unary(method("Fail"), _registered_method=True),
        "server_stream": channel.unary_stream(method("ServerStream")),
        "client_stream": channel.stream_unary(method("ClientStream")),
        "bidi": channel.stream_stream(method("Bidi")),
    }


async def test_unary_calls_round_robin_across_endpoints(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Unary calls are spread evenly over two registered instances."""
    await echo_servers("e1")
    await echo_servers("e2")
    opts = meshkit.DialOptions(insecure=True, balancer=RoundRobin)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        s = stubs(ch)
        replies = [await s["unary"](b"hi", timeout=2) for _ in range(10)]
    served = Counter(r.split(b"|")[0] for r in replies)
    assert served == {b"e1": 5, b"e2": 5}
    assert all(r.endswith(b"|hi") for r in replies)


async def test_all_streaming_kinds_work(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """Server-, client- and bidirectional streaming calls work through the mesh channel."""
    await echo_servers("e1")
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        s = stubs(ch)
        got = [m async for m in s["server_stream"](b"3", timeout=2)]
        assert got == [b"e1|0", b"e1|1", b"e1|2"]

        async def reqs() -> Any:
            for part in (b"a", b"b", b"c"):
                yield part

        assert await s["client_stream"](reqs(), timeout=2) == b"e1|a,b,c"
        assert [m async for m in s["bidi"](reqs(), timeout=2)] == [b"e1|a", b"e1|b", b"e1|c"]

        call = s["bidi"]()
        await call.write(b"x")
        assert await call.read() == b"e1|x"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK


async def test_no_endpoint_is_unavailable_naming_the_service(registry: LocalRegistry) -> None:
    """With no instance registered, a call fails fast with UNAVAILABLE naming the service."""
    async with meshkit.dial(
        "nobody", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs(ch)["unary"](b"x", timeout=2)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "'nobody'" in (info.value.details() or "")
    assert isinstance(info.value, meshkit.NoEndpointsError)


async def test_stream_call_without_endpoint_is_unavailable(registry: LocalRegistry) -> None:
    """A streaming call with no endpoint reports UNAVAILABLE through iteration and code()."""
    async with meshkit.dial(
        "nobody", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        call = stubs(ch)["server_stream"](b"2", timeout=2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE


async def test_remote_status_and_call_accessors(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A handler's error status reaches the caller unchanged, and call accessors report it."""
    await echo_servers("e1")
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        call = stubs(ch)["fail"](b"NOT_FOUND", timeout=2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert await call.code() is grpc.StatusCode.NOT_FOUND
        assert "asked to fail on e1" in await call.details()
        assert call.done()
        ok = stubs(ch)["unary"](b"z", timeout=2)
        assert await ok.code() is grpc.StatusCode.OK  # accessor before await starts the call
        assert await ok == b"e1|z"


async def test_live_dial_picks_up_new_instance_and_drops_removed(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A running channel starts using a newly registered instance and stops using a removed one."""
    await echo_servers("e1")
    opts = meshkit.DialOptions(
        insecure=True, balancer=RoundRobin
    )  # P2C would slow-start the newcomer
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        s = stubs(ch)
        assert (await s["unary"](b"", timeout=2)).startswith(b"e1")
        e2 = await echo_servers("e2")
        await ch.wait_for_endpoints(2)
        served = {(await s["unary"](b"", timeout=2)).split(b"|")[0] for _ in range(4)}
        assert served == {b"e1", b"e2"}
        assert e2.instance is not None
        await registry.deregister(e2.instance)
        await until(lambda: [e.key for e in ch.endpoints()] == ["e1"], what="e2 removed")
        served = {(await s["unary"](b"", timeout=2)).split(b"|")[0] for _ in range(4)}
        assert served == {b"e1"}


async def test_removed_endpoint_finishes_in_flight_calls(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Deregistering an instance does not fail a call already in flight on it."""
    srv = await echo_servers("e1")
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        slow = asyncio.ensure_future(stubs(ch)["sleep"](b"400", timeout=5))
        await until(lambda: any(e.in_flight for e in ch.endpoints()), what="call in flight")
        assert srv.instance is not None
        await registry.deregister(srv.instance)
        await until(lambda: not ch.endpoints(), what="endpoint removed")
        assert await slow == b"e1"


async def test_per_call_interceptor_runs_once_and_attempt_interceptor_per_attempt(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Per-call interceptors wrap the whole call; grpc.aio attempt interceptors see each attempt."""
    await echo_servers("e1")
    await echo_servers("e2")
    seen: list[str] = []
    attempts: list[str] = []

    class Retry(ClientInterceptor):
        """Calls proceed twice: a stand-in for a retry policy."""

        async def intercept_unary(
            self, details: ClientCallDetails, request: Any, proceed: Any
        ) -> Any:
            seen.append(details.method)
            details.metadata.append(("x-test", "1"))
            with pytest.raises(grpc.aio.AioRpcError):
                await proceed(details, b"UNAVAILABLE")
            return await proceed(details, request)

    class CountAttempts(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(
            self, continuation: Any, call_details: Any, request: Any
        ) -> Any:
            attempts.append(call_details.method)
            return await continuation(call_details, request)

    opts = meshkit.DialOptions(
        insecure=True, interceptors=(Retry(),), attempt_interceptors=(CountAttempts(),)
    )
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(2)
        fail = stubs(ch)["fail"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fail(b"NOT_FOUND", timeout=2)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        calls = {s.instance_id: s.calls for s in ch.stats().endpoints}
    assert seen == [method("Fail")]
    assert len(attempts) == 2
    assert calls == {"e1": 1, "e2": 1}  # the second attempt excluded the first endpoint


async def test_call_waits_for_first_discovery_answer(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A call made right after dial() waits for discovery instead of failing."""
    await echo_servers("e1")
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
    try:
        assert await stubs(ch)["unary"](b"now", timeout=2) == b"e1|now"
    finally:
        await ch.close()


async def test_wait_for_ready_waits_for_an_instance(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """wait_for_ready=True makes a call wait until an instance registers."""
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        pending = asyncio.ensure_future(stubs(ch)["unary"](b"w", timeout=5, wait_for_ready=True))
        await asyncio.sleep(0.1)
        assert not pending.done()
        await echo_servers("late")
        assert await pending == b"late|w"


async def test_deadline_bounds_wait_for_ready(registry: LocalRegistry) -> None:
    """wait_for_ready with no instance ends with DEADLINE_EXCEEDED at the deadline."""
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stubs(ch)["unary"](b"w", timeout=0.3, wait_for_ready=True)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_dead_endpoint_is_skipped(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """An endpoint whose port refuses connections is marked failing and not picked."""
    await echo_servers("e1")
    # Registered but nothing listens there (port 1 is never ours).
    await registry.register(Instance(service="echo", instance_id="dead", host="127.0.0.1", port=1))
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        await until(
            lambda: (
                {e.key: e.state.name for e in ch.endpoints()} == {"e1": "READY", "dead": "FAILING"}
            ),
            what="dead endpoint failing",
        )
        replies = [await stubs(ch)["unary"](b"", timeout=2) for _ in range(6)]
    assert all(r.startswith(b"e1|") for r in replies)


async def test_bad_dial_arguments_fail_at_construction(registry: LocalRegistry) -> None:
    """A bad service name or option fails when built, quoting the value."""
    with pytest.raises(meshkit.ConfigError, match="'bad name'"):
        meshkit.dial("bad name", registry=registry, options=meshkit.DialOptions(insecure=True))
    with pytest.raises(meshkit.ConfigError, match="-1"):
        meshkit.DialOptions(insecure=True, resolve_timeout_s=-1)
    with pytest.raises(meshkit.ConfigError, match="ClientInterceptor"):
        meshkit.DialOptions(insecure=True, interceptors=(object(),))  # type: ignore[arg-type]


async def test_a_registry_uri_is_dialed_and_owned_by_the_channel(
    registry: LocalRegistry, registry_dir: Any, echo_servers: EchoFactory,
) -> None:
    """``dial("echo", registry="local:///...")`` (a URI where a Registry was expected:
    ``MESHKIT_REGISTRY`` takes exactly that) was accepted as is: the discovery watch
    failed forever (``'str' object has no attribute 'watch'``, a warning per retry) and
    every call waited out ``resolve_timeout_s`` or its deadline, ``DEADLINE_EXCEEDED``
    "waiting for discovery". A URI is now built into a registry
    (``registry_from_uri``), which the channel owns and closes; an object that is no
    registry (a class given for an instance, a dict) is a ConfigError naming
    ``registry`` at ``dial()``."""
    await echo_servers("e1")
    ch = meshkit.dial("echo", registry=f"local://{registry_dir}?poll_interval_s=0.05",
                      options=meshkit.DialOptions(insecure=True))
    try:
        reply = await ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert reply == b"e1|x"
        owned = ch.registry
        assert isinstance(owned, LocalRegistry) and owned is not registry
    finally:
        await ch.close()
    assert owned._closed
    for wrong, given in ((LocalRegistry, "the class LocalRegistry"), ({}, "a dict")):
        with pytest.raises(meshkit.ConfigError, match=rf"registry must be .* got {given}$"):
            meshkit.dial("echo", registry=wrong,  # type: ignore[arg-type]
                         options=meshkit.DialOptions(insecure=True))
    with pytest.raises(meshkit.ConfigError, match="registry URI"):
        meshkit.dial("echo", registry="nosuch://x", options=meshkit.DialOptions(insecure=True))


@pytest.mark.parametrize("grace", [float("nan"), "1", -1.0, True],
                         ids=["nan", "str", "negative", "bool"])
async def test_close_with_a_bad_grace_is_refused_and_closes_nothing(
        registry: LocalRegistry, echo_servers: EchoFactory, grace: Any) -> None:
    """``close(grace)`` never checked ``grace``. With a stream open, ``grace=nan`` left
    the sub-channel's drain unbounded (``now + nan`` compares false), so ``close()``
    waited for the stream to end by itself (a watch: for ever); ``grace="1"`` (from the
    environment) raised ``TypeError`` inside the pool's close before the sub-channel was
    closed, the error was dropped, ``close()`` returned and the channel read SHUTDOWN
    while the stream kept running and answering (a leaked sub-channel). A bad ``grace``
    is now a ConfigError quoting it, raised at once, nothing closed: the stream runs on
    and a later ``close()`` closes it all."""
    await echo_servers("e1")
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
    stream = ch.stream_stream(method("Bidi"))(timeout=30)
    try:
        await stream.write(b"a")
        assert await asyncio.wait_for(stream.read(), 5) == b"e1|a"
        with pytest.raises(meshkit.ConfigError, match=r"^grace must be .*, got "):
            await asyncio.wait_for(ch.close(grace=grace), 5)
        assert ch.get_state() is not grpc.ChannelConnectivity.SHUTDOWN
        await stream.write(b"b")
        assert await asyncio.wait_for(stream.read(), 5) == b"e1|b"
        await asyncio.wait_for(ch.close(grace=0.1), 5)
        assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 5)
        assert err.value.code() is grpc.StatusCode.CANCELLED
    finally:
        stream.cancel()
        await ch.close()


async def test_stats_and_the_live_registry(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A channel registers with the observability registry while open; its typed snapshot
    gives endpoints, load and policies; a server's gives readiness."""
    await echo_servers("e1")
    async with meshkit.dial(
        "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
    ) as ch:
        await stubs(ch)["unary"](b"", timeout=2)
        assert "echo" in [s.service for s in live_channel_stats()]
        d = ch.stats()
        assert d.service == "echo" and d.balancer == "P2C" and d.state == "READY"
        (ep,) = d.endpoints
        assert ep.instance_id == "e1" and ep.calls == 1 and ep.rtt_ms is not None
        assert ep.rtt_ms > 0
        assert d.retry is not None and d.retry.calls == 1
        assert d.as_dict()["endpoints"][0]["instance_id"] == "e1"
    assert "echo" not in [s.service for s in live_channel_stats()]
    (srv,) = [s for s in live_server_stats() if s.service == "echo"]
    assert srv.ready is True and srv.instance_id == "e1"


@pytest.mark.parametrize("plugin", [False, True])
async def test_sub_channel_calls_are_registered_only_under_a_grpc_observability_plugin(
    registry: LocalRegistry, echo_servers: EchoFactory, monkeypatch: pytest.MonkeyPatch,
    plugin: bool,
) -> None:
    """A registered method costs grpc.aio more per call than an unregistered one (see
    meshkit._registration); it only buys per-method labels from a grpc observability
    plugin, so sub-channel calls are registered only while one is active, whatever the
    stub asked for."""
    asked: list[Any] = []
    real = grpc.aio._channel.Channel.unary_unary

    def spy(self: Any, method_name: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("_registered_method"))
        return real(self, method_name, *args, **kwargs)

    monkeypatch.setattr(grpc.aio._channel.Channel, "unary_unary", spy)
    if plugin:
        grpc_plugin.activate(monkeypatch)
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry,
                            options=meshkit.DialOptions(insecure=True)) as ch:
        assert await stubs(ch)["unary"](b"x", timeout=5) == b"e1|x"
    assert asked == [plugin]


async def test_a_call_its_caller_cancels_is_no_failure_of_the_endpoint(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A caller's cancel() is nobody's failure: a cancelled unary call and cancelled
    streams of each kind leave the endpoint's ``failures`` at 0 (it feeds
    ``meshkit_endpoint_failures`` and the dashboard), as a failing call does not."""
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, retry=None)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        s = stubs(ch)
        unary = asyncio.ensure_future(s["sleep"](b"5000", timeout=10))
        bidi = s["bidi"](timeout=10)
        await bidi.write(b"a")
        assert await bidi.read() == b"e1|a"
        server_stream = s["server_stream"](b"1000000", timeout=10)
        await server_stream.read()
        sent = asyncio.Event()

        async def requests() -> Any:
            yield b"x"
            sent.set()
            await asyncio.sleep(10)

        client_stream = asyncio.ensure_future(s["client_stream"](requests(), timeout=10))
        await asyncio.wait_for(sent.wait(), 5)
        await asyncio.sleep(0.05)
        for call in (unary, bidi, server_stream, client_stream):
            call.cancel()
        for task in (unary, client_stream):
            with pytest.raises(asyncio.CancelledError):
                await task
        for call in (bidi, server_stream):
            assert await call.code() is grpc.StatusCode.CANCELLED
        await until(lambda: [(e.in_flight, e.pending) for e in ch.stats().endpoints]
                    == [(0, 0)], what="outcomes reported")
        await asyncio.sleep(0.05)  # a stream's outcome is reported from a spawned task
        assert [(e.calls, e.failures) for e in ch.stats().endpoints] == [(4, 0)]
        with pytest.raises(grpc.aio.AioRpcError):
            await s["fail"](b"UNAVAILABLE", timeout=5)
        assert [e.failures for e in ch.stats().endpoints] == [1]


async def test_a_stream_its_server_ends_cancelled_is_a_failure_of_the_endpoint(
    registry: LocalRegistry,
) -> None:
    """A ``CANCELLED`` status the endpoint sends is its outcome, for a stream as for a
    unary call (grpc.aio's ``cancelled()`` is true for it too; only a cancel on this side,
    with grpc.aio's own details, is no failure)."""
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.CANCELLED, "server gave up")
        raise AssertionError("unreachable")

    async def server_stream(request: bytes, context: Any) -> Any:
        yield b"first"
        await context.abort(grpc.StatusCode.CANCELLED, "server gave up")

    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    })
    async with raw_server(handlers) as (_server, port):
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(insecure=True, retry=None)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(method("Unary"))(b"x", timeout=5)
            assert err.value.code() is grpc.StatusCode.CANCELLED
            assert [(e.calls, e.failures) for e in ch.stats().endpoints] == [(1, 1)]
            call = ch.unary_stream(method("ServerStream"))(b"x", timeout=5)
            assert await call.read() == b"first"
            assert await call.code() is grpc.StatusCode.CANCELLED
            await until(lambda: [(e.calls, e.failures) for e in ch.stats().endpoints]
                        == [(2, 2)], what="the stream's outcome reported")


async def test_endpoint_counters_go_on_when_an_instance_comes_back_at_a_new_address(
    registry: LocalRegistry,
) -> None:
    """``meshkit_client_endpoint_calls_total`` never goes backwards: an instance registered
    again under its id (a restarted process at a new address, or after a flap) keeps
    counting from where it was, not from 0 (a counter reset to Prometheus)."""
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions
    from tests.support.echo import handler, raw_server

    prom = CollectorRegistry()
    opts = TelemetryOptions(registry=prom, tracing=False, access_log=False)
    svc = "churnmoved"

    def calls() -> float | None:
        return prom.get_sample_value("meshkit_client_endpoint_calls_total",
                                     {"target": svc, "instance_id": "e1"})

    async with raw_server(handler("old")) as (_, old_port), \
            raw_server(handler("new")) as (_, new_port):
        await registry.register(Instance(service=svc, instance_id="e1", host="127.0.0.1",
                                         port=old_port))
        dial = meshkit.DialOptions(insecure=True, telemetry=opts, retry=None)
        async with meshkit.dial(svc, registry=registry, options=dial) as ch:
            await ch.wait_for_endpoints(1, timeout_s=5)
            unary = ch.unary_unary(method("Unary"))
            for _ in range(3):
                assert await asyncio.wait_for(unary(b"x", timeout=3), 5) == b"old|x"
            before = calls()
            # the process restarted elsewhere: same instance id, new address
            await registry.register(Instance(service=svc, instance_id="e1",
                                             host="127.0.0.1", port=new_port))

            await until(lambda: [e.address for e in ch.endpoints()]
                        == [f"127.0.0.1:{new_port}"], timeout_s=5, what="the move seen")
            after_move = calls()
            await ch.wait_for_endpoints(1, timeout_s=5)
            assert await asyncio.wait_for(unary(b"x", timeout=3), 5) == b"new|x"
            after_call = calls()
    assert (before, after_move, after_call) == (3, 3, 4)


async def test_the_clients_own_send_limit_is_no_failure_of_the_endpoint(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """A stream message over the channel's own ``grpc.max_send_message_length`` (grpc.aio's
    INTERNAL "Internal error from Core") is grpc's refusal on this side, no outcome of
    the endpoint: five of them neither count as its failures nor eject it."""
    from meshkit.balancer import P2C, OutlierOptions

    reported: list[grpc.StatusCode] = []  # the outcomes the channel gave the balancer

    class Recording(P2C):
        def pick(self, key: Any = None, exclude: Any = ()) -> Any:
            got = super().pick(key, exclude)
            if got is None:
                return None
            ep, done = got

            def recorded(code: grpc.StatusCode, latency_s: float) -> None:
                reported.append(code)
                done(code, latency_s)

            return ep, recorded

    await echo_servers("e1")
    opts = meshkit.DialOptions(
        insecure=True, balancer=Recording,
        channel_options=(("grpc.max_send_message_length", 1000),))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        for _ in range(5):  # OutlierOptions().consecutive_failures
            call = ch.stream_stream(method("Bidi"))(timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(call.write(b"x" * 2000), 5)
            await asyncio.wait_for(call.code(), 5)
        # the stream reports run in tasks of their own
        await until(lambda: len(reported) >= 5, timeout_s=3, what="5 stream reports")
        assert len(reported) == 5, reported
        counted = [c for c in reported if c in OutlierOptions().failure_codes]
        assert counted == [], (f"the client's own send-limit refusals were reported as the "
                               f"endpoint's failures: {counted}")
        ejected = [ep.instance_id for ep in ch.stats().endpoints if ep.ejected]
        assert ejected == [], "healthy endpoint ejected for the client's own send limit"
        # the endpoint still serves: a small call goes through
        assert await asyncio.wait_for(
            ch.unary_unary(method("Unary"))(b"hi", timeout=5), 8) == b"e1|hi"


@pytest.mark.parametrize("value", [5, None], ids=["int", "None"])
async def test_a_hash_key_value_of_the_wrong_type_is_an_invalid_metadata_error(
        registry: LocalRegistry, echo_servers: EchoFactory, value: Any) -> None:
    """With ``DialOptions(hash_key_metadata="x-user")`` (RingHash affinity), a call whose
    ``x-user`` value is not ``str``/``bytes`` raised a bare ``AttributeError: 'int' object
    has no attribute 'decode'`` from the multicallable (the hash key was decoded before
    the metadata was checked), which no ``except grpc.RpcError`` catches, where the same
    value under any other key is an ``InvalidMetadataError`` (``INTERNAL``, naming the
    key), as the README documents for request metadata gRPC cannot send. Now the hash key
    is no different; nothing is sent."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
            insecure=True, balancer=meshkit.balancer.RingHash,
            hash_key_metadata="x-user")) as ch:
        await ch.wait_for_endpoints(1)
        for key in ("x-other", "x-user"):
            with pytest.raises(meshkit.errors.InvalidMetadataError) as err:
                await ch.unary_unary(method("Unary"))(
                    b"x", timeout=2, metadata=[(key, value)])
            assert err.value.code() is grpc.StatusCode.INTERNAL
            assert key in (err.value.details() or "")
        assert await ch.unary_unary(method("Unary"))(
            b"x", timeout=2, metadata=[("x-user", "u1")]) == b"e1|x"
        assert served == ["Unary"]


class _NoToken(grpc.AuthMetadataPlugin):
    """A per-call credentials plugin whose token source is down."""

    def __call__(self, context: Any, callback: Any) -> None:
        callback(None, ValueError("token source unavailable"))


async def test_a_failing_call_credentials_plugin_ejects_no_healthy_endpoint(
        registry: LocalRegistry, tmp_path: Path) -> None:
    """A caller passes per-call ``credentials=grpc.metadata_call_credentials(plugin)`` and
    its plugin fails (token source down). grpc fails each such call on the client before
    anything is sent: ``UNAVAILABLE`` "Getting metadata from plugin failed with error:
    ..." (plain grpc.aio alike). The mesh counted each as a failure of the endpoint it
    picked, so a few of them ejected a healthy server for every caller of the channel and
    P2C penalised the rest; and likewise for streams. Now such a status with no metadata
    from a server counts against no endpoint (the caller still gets grpc's error)."""
    from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir

    init_ca_dir(tmp_path / "pki", trust_domain="meshkit.test", ttl_days=2)

    def issue(service: str) -> TLSOptions:
        files = issue_into_dir(tmp_path / "pki", service, ttl_h=1, dns=("localhost",),
                               ips=("127.0.0.1",))
        return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                          key_file=files.key_file)

    server_tls = issue("echo")
    servers = []
    try:
        for instance in ("e1", "e2"):
            srv = meshkit.MeshServer(
                "echo", [(lambda _s, server, i=instance: server.add_generic_rpc_handlers(
                    (handler(i),)), None)],
                registry=registry,
                options=meshkit.ServeOptions(tls=server_tls, instance_id=instance,
                                             drain_delay_s=0.0, grace_s=0.5))
            await srv.start()
            servers.append(srv)
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                tls=issue("clientd"))) as ch:
            await ch.wait_for_endpoints(2)
            creds = grpc.metadata_call_credentials(_NoToken())
            for _ in range(12):
                with pytest.raises(grpc.RpcError) as err:
                    await ch.unary_unary(method("Unary"))(b"x", timeout=2,
                                                          credentials=creds)
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "plugin" in (err.value.details() or "")
            for _ in range(6):
                stream = ch.unary_stream(method("ServerStream"))(b"2", timeout=2,
                                                                 credentials=creds)
                with pytest.raises(grpc.RpcError) as err:
                    await stream.read()
                assert "plugin" in (err.value.details() or "")
            await asyncio.sleep(0.1)  # the streams' outcomes are reported in a task
            stats = ch.stats()
            assert stats.ejections == 0, "a healthy server was ejected"
            assert sorted((e.instance_id, e.failures, e.ejected)
                          for e in stats.endpoints) == [("e1", 0, False), ("e2", 0, False)]
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=2) in (
                b"e1|x", b"e2|x")
    finally:
        for srv in servers:
            await srv.drain()



async def test_the_sub_channels_user_agent_names_meshkit_after_the_users_own(
    registry: LocalRegistry,
) -> None:
    """Every call's ``user-agent`` carries the ``meshkit/<version>`` product token
    (``MESH_USER_AGENT``, a channel option of each sub-channel, no per-call metadata): a
    draining meshkit server refuses such callers' new calls with a nack and leaves other
    gRPC clients to its GOAWAY (tests/test_server.py). A secondary user agent given in
    ``channel_options`` is kept, before it."""
    from meshkit._metadata import MESH_USER_AGENT

    agents: list[str] = []

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        agents.append(dict(context.invocation_metadata() or ()).get("user-agent", ""))
        return b"ok"

    handlers = grpc.method_handlers_generic_handler("x.Agent", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary)})
    async with raw_server(handlers) as (_server, port):
        await registry.register(Instance(service="agent", instance_id="a1",
                                         host="127.0.0.1", port=port))
        for extra in ((), (("grpc.secondary_user_agent", "orders/2.1"),)):
            opts = meshkit.DialOptions(insecure=True, telemetry=None, channel_options=extra)
            async with meshkit.dial("agent", registry=registry, options=opts) as ch:
                assert await ch.unary_unary("/x.Agent/Unary")(b"x", timeout=5) == b"ok"
    assert f"meshkit/{meshkit.__version__}" == MESH_USER_AGENT
    assert [a.split()[-1] for a in agents] == [MESH_USER_AGENT] * 2, agents
    assert agents[1].split()[-2] == "orders/2.1", agents

@pytest.mark.parametrize("codecs", ["bytes", "deserializer", "attempt-interceptors"])
async def test_a_unary_response_call_the_server_ends_ok_without_a_message_fails_internal(
    registry: LocalRegistry, codecs: str,
) -> None:
    """A server that ends a call made as unary-response with ``OK`` and no response
    message (its method really streams its responses, and had none: a proto that differs
    between the two sides) breaks the call's cardinality (grpc's statuscodes.md:
    "Response cardinality violation"): grpc-go (since grpc-go#8278), grpc-java and
    grpc-js fail it ``INTERNAL``. grpc.aio hands the caller ``None``.

    What was wrong: a meshkit call of such a method without a deserializer (the bytes
    API) returned ``None`` as a successful response, counted as the endpoint's success
    (``failures`` 0); with a deserializer it failed ``INTERNAL`` "the response
    deserializer raised TypeError" (``None`` reached the deserializer). Now every such
    call (unary-unary and stream-unary, codecs run by the mesh or by grpc.aio under
    ``attempt_interceptors``) fails ``INTERNAL`` naming the missing message, before any
    deserializer runs, counted as the answering endpoint's failure; a call it answers
    with one message still succeeds."""
    async def stream(request: bytes, context: Any) -> Any:
        for i in range(int(request or b"0")):
            yield b"m|%d" % i

    async def collect(requests: Any, context: Any) -> Any:
        got = [r async for r in requests]
        for r in got[:1] if got and got[0] == b"1" else ():
            yield b"got|" + r

    handlers = grpc.method_handlers_generic_handler("x.Mismatch", {
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Collect": grpc.stream_stream_rpc_method_handler(collect),
    })
    ran: list[Any] = []

    def deserializer(raw: bytes) -> bytes:
        ran.append(raw)
        return bytes(raw)  # TypeError for None, as a protobuf FromString raises

    deser = None if codecs == "bytes" else deserializer
    attempt = (_Passing(),) if codecs == "attempt-interceptors" else ()
    async with raw_server(handlers) as (_server, port):
        await registry.register(Instance(service="mismatch", instance_id="m1",
                                         host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(insecure=True, retry=None, telemetry=None,
                                   attempt_interceptors=attempt)
        async with meshkit.dial("mismatch", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            unary = ch.unary_unary("/x.Mismatch/Stream", response_deserializer=deser)
            upload = ch.stream_unary("/x.Mismatch/Collect", response_deserializer=deser)
            assert await unary(b"1", timeout=5) == b"m|0"  # one message: a good answer
            assert await upload(iter([b"1"]), timeout=5) == b"got|1"
            ran.clear()
            outcomes = []
            for call in (lambda: unary(b"0", timeout=5),
                         lambda: upload(iter([b"a", b"b"]), timeout=5)):
                try:
                    got = await call()
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code(), exc.details()))
                else:
                    outcomes.append(("succeeded with", got))
            stats = [(e.calls, e.failures) for e in ch.stats().endpoints]
    assert [o[0] for o in outcomes] == [grpc.StatusCode.INTERNAL] * 2, outcomes
    assert all("no response message" in str(o[1]) for o in outcomes), outcomes
    assert ran == []  # no deserializer ran for the missing messages
    assert stats == [(4, 2)], stats  # the endpoint's failures, as any INTERNAL answer


class _Passing(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """An attempt interceptor that only passes the call on (so grpc.aio runs the codecs)."""

    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        return await continuation(details, request)

    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(details, request_iterator)


@pytest.mark.parametrize("attempt", [False, True], ids=["in-mesh", "attempt-interceptors"])
async def test_a_deserializer_that_returns_none_for_a_real_message_is_not_an_error(
    registry: LocalRegistry, attempt: bool,
) -> None:
    """A server answers a unary-response method with one (empty) message, and the
    caller's response deserializer maps it to ``None`` (e.g. ``lambda b: json.loads(b)
    if b else None``): the call had its one response message, so it succeeds with what
    the deserializer returned (as on grpc.aio's own channel), counted as the endpoint's
    success, whether or not ``attempt_interceptors`` are set.

    What was wrong (5a2f859): under ``attempt_interceptors`` grpc.aio runs the
    deserializer, so the attempt's check for a missing message (``response is None``)
    took the deserializer's ``None`` for grpc.aio's "no message" and failed the call
    ``INTERNAL`` "no response message", counted against the endpoint."""

    async def unary(request: bytes, context: Any) -> bytes:
        return b""  # one, empty, message

    async def upload(requests: Any, context: Any) -> bytes:
        return b"" if [r async for r in requests] else b"none"

    handlers = grpc.method_handlers_generic_handler("x.Empty", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Upload": grpc.stream_unary_rpc_method_handler(upload)})

    def deser(raw: bytes) -> Any:
        return None if raw == b"" else raw

    async with raw_server(handlers) as (_server, port):
        # grpc.aio itself: the call succeeds with None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            assert await plain.unary_unary("/x.Empty/Unary", response_deserializer=deser)(
                b"x", timeout=5) is None
        await registry.register(Instance(service="empty", instance_id="e1",
                                         host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(insecure=True, retry=None, telemetry=None,
                                   attempt_interceptors=(_Passing(),) if attempt else ())
        async with meshkit.dial("empty", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            got: list[Any] = []
            for call in (lambda: ch.unary_unary("/x.Empty/Unary", response_deserializer=deser)(
                    b"x", timeout=5),
                         lambda: ch.stream_unary("/x.Empty/Upload",
                                                 response_deserializer=deser)(
                    iter([b"x"]), timeout=5)):
                try:
                    got.append(await call())
                except grpc.aio.AioRpcError as exc:
                    got.append((exc.code(), exc.details()))
            stats = [(e.calls, e.failures) for e in ch.stats().endpoints]
    assert got == [None, None], got
    assert stats == [(2, 0)], stats
