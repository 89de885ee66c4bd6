"""MeshServer's lifecycle at its edges: a drain before the start, and what follows it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import grpc
import pytest
import structlog

import meshkit
import meshkit.server
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError, RegistryError
from meshkit.observability import AdminOptions
from meshkit.server import _SharedAdmin
from tests.support.wait import until

_OPTS = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0, grace_s=1)


async def test_drain_before_start_stops_the_server_for_good(registry: LocalRegistry) -> None:
    """A drain() that runs before start() (a shutdown racing the start-up task) leaves the
    server stopped: wait_stopped() returns, and a later start() raises RuntimeError
    without binding or registering (it used to serve, registered, with nobody left to
    stop it, and wait_stopped() waited for ever)."""
    srv = meshkit.MeshServer("echo", registry=registry, options=_OPTS)
    await srv.drain()
    await asyncio.wait_for(srv.wait_stopped(), 3)
    with pytest.raises(RuntimeError, match="after drain"):
        await srv.start()
    assert srv.port == 0 and srv.instance is None and not srv.live
    assert await registry.instances("echo") == frozenset()


async def test_drain_racing_ahead_of_a_start_task(registry: LocalRegistry) -> None:
    """A start() task created, then drain() awaited before the task first ran: the start
    raises instead of serving after the drain returned."""
    srv = meshkit.MeshServer("echo", registry=registry, options=_OPTS)
    starting = asyncio.ensure_future(srv.start())
    await srv.drain()
    with pytest.raises(RuntimeError):
        await starting
    assert await registry.instances("echo") == frozenset()
    assert not srv.live


class _HangingRegistry:
    """A registry whose register() and deregister() never return (its server unreachable
    with no timeout of its own); counts the deregistrations still awaiting."""

    def __init__(self) -> None:
        self.pending = 0

    async def register(self, instance: object) -> None:
        await asyncio.Event().wait()

    async def deregister(self, instance: object) -> None:
        self.pending += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.pending -= 1

    async def close(self) -> None:
        pass


class _Closing(grpc.aio.ServerInterceptor):
    """A user's interceptor with an aclose() (connections it holds)."""

    def __init__(self) -> None:
        self.closed = False

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)

    async def aclose(self) -> None:
        self.closed = True


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_undo_of_a_cancelled_start_cancelled_again_still_undoes_it() -> None:
    """start() cancelled while registering is undone; cancelled again while the undo waits
    for the registration's withdrawal (up to 5 s, a registry that hangs), the undo still
    stops the grpc server, closes the interceptors and releases the admin server, and the
    withdrawal is not left running (the second cancel used to end the undo there: the
    port stayed bound, the admin server served for good, aclose() never ran)."""
    registry = _HangingRegistry()
    closing = _Closing()
    opts = meshkit.ServeOptions(insecure=True, admin=AdminOptions(port=0), drain_delay_s=0,
                                grace_s=1, interceptors=[closing])
    srv = meshkit.MeshServer("echo", registry=registry, options=opts)
    starting = asyncio.ensure_future(srv.start())
    await until(lambda: srv._registering is not None, timeout_s=5)
    grpc_server, port = srv._server, srv.port  # held: no garbage collection stops it
    assert srv.admin is not None
    admin_port = srv.admin.port
    starting.cancel()
    await until(lambda: registry.pending == 1, timeout_s=5)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert grpc_server is not None
    assert _refused(port) and _refused(admin_port)
    assert _SharedAdmin.users() == 0 and closing.closed
    await until(lambda: registry.pending == 0, timeout_s=2)
    await asyncio.wait_for(srv.wait_stopped(), 2)


class _SlowClosing(_Closing):
    """An interceptor whose aclose() takes a while (a pool closing its connections)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()

    async def aclose(self) -> None:
        self.closing.set()
        await asyncio.sleep(3)
        self.closed = True


async def test_a_drain_cancelled_while_closing_an_interceptor_still_releases_the_rest(
        registry: LocalRegistry) -> None:
    """The drain's own task cancelled while an interceptor's aclose() runs (asyncio.run's
    sweep at the end of a run, a serve() task left running): that close is cancelled, but
    the steps after it still run: the admin server is released (it used to keep the
    server as its user and serve for good) and the server ends stopped."""
    slow = _SlowClosing()
    opts = meshkit.ServeOptions(insecure=True, admin=AdminOptions(port=0), drain_delay_s=0,
                                grace_s=1, interceptors=[slow])
    srv = meshkit.MeshServer("echo", registry=registry, options=opts)
    await srv.start()
    assert srv.admin is not None
    admin_port = srv.admin.port
    draining = asyncio.ensure_future(srv.drain())
    await asyncio.wait_for(slow.closing.wait(), 5)
    assert srv._drain_task is not None
    srv._drain_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining
    await asyncio.wait_for(srv.wait_stopped(), 2)
    assert _SharedAdmin.users() == 0 and _refused(admin_port)
    assert not slow.closed


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0",
                                  "::ffff:0.0.0.0"])
def test_an_unspecified_advertise_host_is_refused_at_construction(
        host: str, registry: LocalRegistry) -> None:
    """``advertise_host="0.0.0.0"`` (a copy of ``host`` into it) was registered as it is:
    every caller dialled its own machine, while the server reported itself ready. Refused
    when the server is built (as Consul refuses to advertise it), the value quoted."""
    opts = meshkit.ServeOptions(insecure=True, admin=None, host="0.0.0.0",
                                advertise_host=host)
    with pytest.raises(ConfigError, match="advertise_host") as info:
        meshkit.MeshServer("echo", registry=registry, options=opts)
    assert repr(host) in str(info.value)


def test_a_reachable_advertise_host_is_still_taken(registry: LocalRegistry) -> None:
    """An address or name callers can dial is taken as before (loopback too)."""
    for host in ("10.1.2.3", "::1", "[fe80::1%eth0]", "svc.local", "127.0.0.1"):
        opts = meshkit.ServeOptions(insecure=True, admin=None, host="0.0.0.0",
                                    advertise_host=host)
        assert meshkit.MeshServer("echo", registry=registry, options=opts).options is opts


@pytest.mark.parametrize(("field", "value"), [
    ("weight", 2**63), ("instance_id", "echo-\ud83d"), ("tags", ["v2\ud83d"]),
    ("meta", {"zone": "a\ud83d"}), ("meta", {"k\ud83d": "v"})])
async def test_what_the_registry_refuses_is_refused_at_construction(
        field: str, value: Any, registry: LocalRegistry) -> None:
    """A weight past 2**63 - 1, or an instance id, tag or meta that is not UTF-8 (a lone
    surrogate), was taken by ServeOptions and MeshServer and refused only by start()
    building the Instance to register, after binding and serving; now MeshServer
    refuses it when built, the value quoted, and nothing is bound."""
    opts = meshkit.ServeOptions(insecure=True, admin=None, **{field: value})
    with pytest.raises(ConfigError) as info:
        meshkit.MeshServer("echo", registry=registry, options=opts)
    quoted = repr(value if not isinstance(value, (list, dict)) else
                  next(iter(value)) if isinstance(value, list) else
                  next(v if "\ud83d" in v else k for k, v in value.items()))
    assert quoted in str(info.value)


async def test_a_host_name_whose_port_is_taken_on_one_address_is_refused(
        registry: LocalRegistry) -> None:
    """``host="localhost"`` on a fixed port another process listens on at 127.0.0.1:
    grpc bound the name's other address (``::1``) alone and the server started,
    registered at ``localhost:<port>``, where callers resolving ``127.0.0.1`` reached the
    other process. start() raises RuntimeError instead, nothing bound or registered."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        opts = meshkit.ServeOptions(insecure=True, admin=None, host="localhost", port=port)
        srv = meshkit.MeshServer("echo", registry=registry, options=opts)
        with pytest.raises(RuntimeError, match="in use"):
            await srv.start()
        assert srv.instance is None and not srv.live
        assert await registry.instances("echo") == frozenset()
        await srv.drain()


async def test_a_host_name_on_a_free_fixed_port_still_starts(registry: LocalRegistry) -> None:
    """``host="localhost"`` on a free fixed port starts and is registered there."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    opts = meshkit.ServeOptions(insecure=True, admin=None, host="localhost", port=port,
                                drain_delay_s=0)
    srv = meshkit.MeshServer("echo", registry=registry, options=opts)
    inst = await srv.start()
    try:
        assert (inst.host, inst.port) == ("localhost", port)
    finally:
        await srv.drain()


async def test_an_awaitable_on_started_returns_is_awaited(registry: LocalRegistry) -> None:
    """``on_started=lambda srv: asyncio.gather(warm(), prime())`` returns a future, not a
    coroutine: it was dropped un-awaited, so its failure was lost (logged at garbage
    collection at best) and serve() went on serving instead of draining and raising it,
    as it does for an on_started that raises. Any awaitable is awaited now."""
    async def prime() -> None:
        raise ValueError("cache priming failed")

    opts = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0, grace_s=1)
    started: list[meshkit.MeshServer] = []

    def on_started(srv: meshkit.MeshServer) -> Any:
        started.append(srv)
        return asyncio.gather(prime())

    with pytest.raises(ValueError, match="cache priming failed"):
        await asyncio.wait_for(meshkit.serve("echo", [], registry=registry, options=opts,
                                             on_started=on_started), 5)
    assert started and not started[0].live
    assert await registry.instances("echo") == frozenset()


@pytest.mark.parametrize(("host", "reads"), [
    ("0x0", "0.0.0.0"), ("0x7f.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
    ("1.2.3.0x4", "1.2.3.4")])
def test_an_ipv4_address_in_hex_form_is_refused_as_a_host(host: str, reads: str) -> None:
    """``host="0x0"`` passed as a host *name* while every resolver (inet_aton: grpc's
    bind, getaddrinfo) reads it as 0.0.0.0: the server bound every interface, yet was
    not seen as binding all (is_unspecified) and registered ``0x0``, which each caller
    resolves to its own machine; ``advertise_host="0x0"`` slipped past the unspecified
    check the same way. Refused at construction, as ``"127.1"`` already is, quoting the
    value and the address it reads as."""
    for make in (lambda: meshkit.ServeOptions(insecure=True, admin=None, host=host),
                 lambda: meshkit.ServeOptions(insecure=True, admin=None,
                                              advertise_host=host),
                 lambda: AdminOptions(host=host)):
        with pytest.raises(ConfigError) as info:
            make()
        assert repr(host) in str(info.value) and reads in str(info.value)


def test_names_that_only_look_numeric_are_still_names() -> None:
    """Names with hex-looking labels that no resolver reads as an address are taken."""
    for host in ("0xdeadbeef.example", "deadbeef", "abc.123", "x0", "0xg"):
        assert meshkit.ServeOptions(insecure=True, admin=None, host=host).host == host


_KEY = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(("field", "value", "secret"), [
    ("credentials", _KEY, "MIIEvQ"),
    ("credentials", (_KEY, b"-----BEGIN CERTIFICATE-----"), "MIIEvQ"),
    ("tls", _KEY, "MIIEvQ"),
    ("rate_limit", "redis://meshkit:hunter2@127.0.0.1:6379/0", "hunter2"),
    ("auth", "Bearer eyJhbGciOiJSUzI1NiJ9.s3cr3t", "s3cr3t")])
def test_a_mistaken_secret_option_is_refused_without_quoting_it(
        field: str, value: Any, secret: str) -> None:
    """``ServeOptions(credentials=key_pem)`` (the private key's bytes, or a ``(key,
    cert)`` pair as grpc.ssl_server_credentials takes) was refused with the key quoted in
    the ConfigError, which reaches tracebacks and logs; likewise a storage URI with its
    password for ``rate_limit`` or a token for ``auth``. The value is named by its type
    only now."""
    with pytest.raises(ConfigError, match=field) as info:
        meshkit.ServeOptions(insecure=True, admin=None, **{field: value})
    assert secret not in str(info.value)
    assert type(value).__qualname__ in str(info.value)


def test_true_for_an_options_field_still_gets_its_hint() -> None:
    """``tls=True`` is quoted with the hint to give ``TLSOptions()`` (no secret in it)."""
    with pytest.raises(ConfigError, match=r"got True \(give TLSOptions\(\)"):
        meshkit.ServeOptions(tls=True)  # type: ignore[arg-type]


async def test_signals_given_as_numbers_are_named_in_the_second_signals_warning(
        registry: LocalRegistry) -> None:
    """``run_until_signal((10,))`` (a number, not ``signal.SIGUSR1``): the first signal
    drained, but the second, during the drain, raised AttributeError ('int' object has no
    attribute 'name') in the listener and again in the fan-out's own error log, an
    exception in the loop's signal callback instead of the warning; the numbers are
    taken as their Signals now."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    opts = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0.3, grace_s=1)
    srv = meshkit.MeshServer("echo", registry=registry, options=opts)
    try:
        with structlog.testing.capture_logs() as logs:
            serving = asyncio.ensure_future(srv.run_until_signal((int(signal.SIGUSR1),)))
            await until(lambda: srv.ready, timeout_s=5)
            os.kill(os.getpid(), signal.SIGUSR1)
            await until(lambda: srv.draining, timeout_s=5)
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(serving, 5)
    finally:
        loop.set_exception_handler(None)
    assert errors == []
    warned = [e for e in logs if e["event"].startswith("signal during the drain")]
    assert [e["signal"] for e in warned] == ["SIGUSR1"]


async def test_a_start_that_failed_to_bind_is_stopped_for_good(
        registry: LocalRegistry) -> None:
    """start() on a port in use raised, but left the server neither stopped nor refusing
    a second start: wait_stopped() waited for ever (a failure after binding makes it
    return), and a second start() bound anew, though start() promises "a second start()
    ... after a failed start raises RuntimeError". Both as after binding now, and the
    handler threads' pool is shut down."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        opts = meshkit.ServeOptions(insecure=True, admin=None, port=port, drain_delay_s=0)
        srv = meshkit.MeshServer("echo", registry=registry, options=opts)
        with pytest.raises(RuntimeError, match=r"(?i)bind"):
            await srv.start()
    await asyncio.wait_for(srv.wait_stopped(), 2)
    assert srv._handler_threads is None
    with pytest.raises(RuntimeError, match="after a failed start"):
        await srv.start()
    assert srv.instance is None and not srv.live
    assert await registry.instances("echo") == frozenset()


class _RegistryHangingAtDeregister(_HangingRegistry):
    """Registers at once; its deregister() never returns."""

    async def register(self, instance: object) -> None:
        pass


async def test_a_deregistration_that_hangs_does_not_hold_the_drain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry whose deregister() never returns (its server unreachable, no timeout
    of its own) held the drain at its first step for ever: the server went on serving,
    deregistered nowhere, until the orchestrator's SIGKILL cut every call. The drain
    waits _DRAIN_DEREGISTER_S at most (10 s, as go-kratos's registrarTimeout; 0.2 here),
    logs "deregister failed", cancels the request and goes on to stop."""
    monkeypatch.setattr(meshkit.server, "_DRAIN_DEREGISTER_S", 0.2)
    registry = _RegistryHangingAtDeregister()
    opts = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0, grace_s=1)
    srv = meshkit.MeshServer("echo", registry=registry, options=opts)
    await srv.start()
    port = srv.port
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(srv.drain(), 5)
    assert _refused(port) and not srv.live
    assert any(e["event"] == "deregister failed" for e in logs)
    await until(lambda: registry.pending == 0, timeout_s=2)


async def test_two_starts_at_once_on_a_host_name_the_second_says_already_started(
        registry: LocalRegistry) -> None:
    """Two start() at once of a server on ``localhost`` and a fixed port: the second,
    whose port check ran after the first had bound, said "cannot bind ... in use" (its
    own server's port) instead of "already started"; the first serves on."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    opts = meshkit.ServeOptions(insecure=True, admin=None, host="localhost", port=port,
                                drain_delay_s=0)
    srv = meshkit.MeshServer("echo", registry=registry, options=opts)
    results = await asyncio.gather(srv.start(), srv.start(), return_exceptions=True)
    try:
        started = [r for r in results if isinstance(r, meshkit.discovery.Instance)]
        refused = [str(r) for r in results if isinstance(r, RuntimeError)]
        assert len(started) == 1 and len(refused) == 1, results
        assert "already started" in refused[0]
        assert srv.live
    finally:
        await srv.drain()


def _add_nothing(servicer: Any, server: Any) -> None:
    """An add function that adds nothing."""


@pytest.mark.parametrize(("servicers", "says"), [
    ((_add_nothing, object()), "one pair given bare"),
    ([(_add_nothing,)], "a tuple of 1"),
    ([(object(), object())], "a tuple"),
    ([_add_nothing], "one pair given bare"),
    (None, "a NoneType")])
def test_servicers_that_are_not_pairs_are_refused_at_construction(
        servicers: Any, says: str, registry: LocalRegistry) -> None:
    """``serve("x", (add_Foo, Foo()))`` (one pair, not a list of pairs) was taken and
    failed at start() with TypeError "cannot unpack non-iterable function object" (or
    in the middle of adding servicers); refused when the server is built now, with a
    ConfigError saying what was expected."""
    opts = meshkit.ServeOptions(insecure=True, admin=None)
    with pytest.raises(ConfigError, match="add_XServicer_to_server") as info:
        meshkit.MeshServer("echo", servicers, registry=registry, options=opts)
    assert says in str(info.value)


def test_pairs_as_lists_or_tuples_are_taken(registry: LocalRegistry) -> None:
    """Pairs as tuples or two-item lists, in any collection, and add() too."""
    opts = meshkit.ServeOptions(insecure=True, admin=None)
    srv = meshkit.MeshServer("echo", [[_add_nothing, None], (_add_nothing, 1)],
                             registry=registry, options=opts)
    srv.add(_add_nothing, 2)
    assert [s for _, s in srv._servicers] == [None, 1, 2]
    with pytest.raises(ConfigError):
        srv.add(object(), 3)  # type: ignore[arg-type]


class _FirstRegistrationFails:
    """A registry shared by two servers: its first register() fails; each deregister()
    waits for ``gate`` (a registry slow to answer), then removes the id."""

    def __init__(self) -> None:
        self.entries: dict[str, object] = {}
        self.calls = 0
        self.gate = asyncio.Event()
        self.withdrawing = asyncio.Event()

    async def register(self, instance: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RegistryError("refused (test)")
        self.entries[instance.instance_id] = instance

    async def deregister(self, instance: Any) -> None:
        self.withdrawing.set()
        await self.gate.wait()
        self.entries.pop(instance.instance_id, None)

    async def close(self) -> None:
        pass


async def test_an_undone_start_keeps_its_id_until_its_registration_is_withdrawn() -> None:
    """A failed start's undo gave its default instance id back before withdrawing its
    registration: a second server of the service started meanwhile took that very id,
    registered it, and the first's late withdrawal deregistered the second, which went
    on serving listed nowhere. The id is held until the withdrawal is done now, so the
    second registers under an id of its own (``-<port>``) and stays registered."""
    registry = _FirstRegistrationFails()
    opts = meshkit.ServeOptions(insecure=True, admin=None, drain_delay_s=0, grace_s=1)
    first = meshkit.MeshServer("echo", registry=registry, options=opts)
    failing = asyncio.ensure_future(first.start())
    await asyncio.wait_for(registry.withdrawing.wait(), 5)
    second = meshkit.MeshServer("echo", registry=registry, options=opts)
    inst = await second.start()
    try:
        registry.gate.set()
        with pytest.raises(RegistryError):
            await failing
        assert inst.instance_id in registry.entries
    finally:
        await second.drain()
