"""IPv6 across the stack: serve() and its registration, the admin and JWKS servers, the
CLI's admin addresses, and host options checked at construction. All traffic is on
loopback (``::1`` / ``127.0.0.1``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import AdminOptions, TelemetryOptions
from meshkit.observability._admin import AdminServer
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_REPO = str(Path(__file__).resolve().parents[1])


def _serve_opts(**kw: object) -> meshkit.ServeOptions:
    return meshkit.ServeOptions(insecure=True, instance_id="e1", drain_delay_s=0.0,
                                grace_s=1.0, **kw)  # type: ignore[arg-type]


async def test_client_span_peer_address_of_a_bracketed_ipv6_server_has_no_brackets(
    registry: LocalRegistry,
) -> None:
    """A user serves on ``ServeOptions(host="[::1]")`` (the bracketed spelling the
    ``host`` docstring itself uses: ``"[::]"`` for all) and calls it through ``dial()``
    with tracing on. The CLIENT span says ``network.peer.address = "[::1]"``, while the
    SERVER span of the same call says ``"::1"``.

    OpenTelemetry's semantic conventions define ``network.peer.address`` as the peer's IP
    address (``"10.1.2.80"``, ``"::1"``): brackets belong to URI/host:port syntax
    (RFC 3986 IP-literal), not to the address attribute, and backends that group or join
    spans by peer address see two different peers. The cause is that serve() registers
    ``opts.host`` verbatim, brackets included (meshkit/server.py:650-651), and the client
    reporter copies ``Instance.host`` into the attribute (observability/_client.py:328),
    although ``Instance.host`` is documented as "an IP or a host name"."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = TelemetryOptions(tracer_provider=provider, registry=CollectorRegistry())
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=_serve_opts(host="[::1]", telemetry=tel))
    await srv.start()
    try:
        async with meshkit.dial("echo", registry=registry,
                                options=meshkit.DialOptions(insecure=True, telemetry=tel)) as ch:
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=10) == b"e1|x"
            await until(lambda: len(exporter.get_finished_spans()) >= 2, timeout_s=10,
                        what="client and server spans")
    finally:
        await srv.drain()
        provider.shutdown()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    server_attrs = dict(server.attributes or {})
    client_attrs = dict(client.attributes or {})
    assert server_attrs["network.peer.address"] == "::1"
    assert client_attrs["network.peer.address"] == "::1", client_attrs


async def test_consul_registration_of_a_bracketed_ipv6_host_sends_a_bare_address() -> None:
    """A user serves on ``ServeOptions(host="[::1]")`` with a Consul registry. meshkit
    registers the service with ``"Address": "[::1]"``.

    Consul's service ``Address`` is an IP address or host name (agent/service API;
    Consul DNS answers an AAAA record only for an IP, and Prometheus' consul_sd or Envoy
    join it with the port themselves: ``[[::1]]:port``). The address must go out bare,
    ``"::1"``, as meshkit itself sends it for ``host="::1"``. Cause: serve() registers
    ``opts.host`` with its brackets (meshkit/server.py:650-651) and ConsulRegistry copies
    ``Instance.host`` into ``Address`` (meshkit/discovery/_consul.py:635)."""
    pytest.importorskip("consul")
    from meshkit.discovery import ConsulOptions, ConsulRegistry
    from tests.discovery.consul_double import ConsulDouble

    async with ConsulDouble() as double:
        reg = ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=5.0))
        srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                                 options=_serve_opts(host="[::1]", admin=None))
        try:
            await srv.start()
            sent = [r for r in double.registrations if r.get("ID") == "e1"]
            assert sent, double.registrations
            assert sent[-1]["Address"] == "::1", sent[-1]
        finally:
            await srv.drain()
            await reg.close()


async def _meshkit_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshkit.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=_REPO)
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_services_reports_a_healthy_ipv6_loopback_server_as_ready(
    registry: LocalRegistry,
) -> None:
    """A user serves on the IPv6 loopback, ``ServeOptions(host="::1")``, with the default
    admin server, and runs ``meshkit services`` on the same machine. The healthy,
    registered, serving instance is listed as ``unreachable`` with an admin URL
    (``http://[::1]:<admin_port>``) where nothing listens, and ``meshkit
    prometheus-targets`` hands Prometheus the same dead ``[::1]:<admin_port>`` target
    (``MeshkitInstanceDown`` would fire for a live instance).

    The README promises "health is each instance's admin /readyz (ready, not-ready while
    draining, unreachable)". serve() announces ``admin_port`` in the registry (and the CLI
    pairs it with the instance's host, meshkit/_cli/services.py:59,
    meshkit/_cli/prometheus.py:58), but the default admin server binds ``127.0.0.1``
    whatever ``ServeOptions.host`` is (server.py:184, observability/_admin.py:55): the
    announced admin endpoint does not exist. The instance should be shown ``ready``."""
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=_serve_opts(host="::1"))
    await srv.start()
    try:
        assert srv.admin is not None
        o = registry.options
        uri = f"local://{o.path}?ttl_s={o.ttl_s}&poll_interval_s={o.poll_interval_s}"
        code, out, err = await _meshkit_cli("services", "--registry", uri, "--json",
                                            "--timeout-s", "5")
    finally:
        await srv.drain()
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["address"] == f"[::1]:{srv.port}"
    assert row["health"] == "ready", row


async def test_admin_server_on_the_ipv6_wildcard_accepts_ipv4_clients() -> None:
    """A user binds the admin server to every address with the IPv6 wildcard,
    ``AdminOptions(host="::")`` (or ``"[::]"``, the spelling ``ServeOptions`` documents as
    "for all" and the admin server accepts), so that a Prometheus or kubelet probe can reach
    ``/metrics`` and ``/readyz``. A client connecting over IPv4 (``127.0.0.1``) is refused.

    On Linux ``::`` is a dual-stack wildcard (``net.ipv6.bindv6only=0``): the gRPC server of
    ``ServeOptions(host="[::]")`` accepts IPv4 clients (grpc core binds dual-stack), as do
    Envoy and Go servers. asyncio's ``create_server`` sets ``IPV6_V6ONLY`` on every IPv6
    socket, so the admin server (start_app in meshkit/_aio_http.py:31, via
    observability/_admin.py:157) listens on IPv6 only; the same server process answers
    gRPC on 127.0.0.1 but not its admin port. It should accept both families (bind with
    ``IPV6_V6ONLY=0`` or bind ``0.0.0.0`` too)."""
    admin = AdminServer(AdminOptions(host="::", registry=CollectorRegistry(),
                                     require_server=False))
    port = await admin.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://[::1]:{port}/healthz") as resp:
                assert resp.status == 200  # IPv6 works
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    status = resp.status
            except aiohttp.ClientConnectorError as exc:
                pytest.fail(f"admin server on '::' refuses IPv4 clients: {exc}")
            assert status == 200
    finally:
        await admin.stop()


async def test_serving_on_a_spelled_out_ipv6_wildcard_advertises_the_host_name(
    registry: LocalRegistry,
) -> None:
    """A user binds every interface with ``ServeOptions(host="0:0:0:0:0:0:0:0")`` (the
    full RFC 4291 §2.2 text form of the unspecified address ``::``; ``"::0"`` behaves the
    same). grpc binds all interfaces, but serve() registers the unspecified address itself
    as the instance's host, so clients on other machines dial ``[0:0:0:0:0:0:0:0]:port``,
    which the kernel treats as *their own* host: calls fail, or worse reach whatever
    listens on that port locally.

    ``ServeOptions.advertise_host`` promises "default ``host``, or the machine's host name
    when binding all interfaces". The wildcard test compares strings against
    ``("0.0.0.0", "::", "[::]")`` only (meshkit/server.py:651); it should parse the
    address (``ipaddress.ip_address(host.strip("[]")).is_unspecified``)."""
    import socket

    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=_serve_opts(host="0:0:0:0:0:0:0:0", admin=None))
    inst = await srv.start()
    try:
        assert inst.host == socket.gethostname(), inst
    finally:
        await srv.drain()


@pytest.mark.parametrize("host", ["::1]", "[::1", "[localhost]", "", "a b", "999.1.1.1",
                                  "host-.example", "[::1]:50051", "::1::2", " ::1",
                                  # an IPv6 zone with a space in it (a trailing one from a
                                  # config file), or any other character RFC 6874 leaves out
                                  "fe80::1%eth0 ", "::1%a b", "[::1%\n]", "[fe80::1%eth0 ]",
                                  "fe80::1%eth0/64", "fe80::1%"])
def test_a_host_that_is_neither_an_address_nor_a_name_is_refused_at_construction(
    host: str,
) -> None:
    """A mistyped host, e.g. ``ServeOptions(host="::1]")``, was accepted: serve() bound
    ``[::1]`` (it stripped brackets to build the bind address) and registered ``::1]``, the
    address ``[::1]]:<port>`` that no client can dial, while the server reported itself
    healthy. The README's error table: a bad option is a ``ConfigError`` at construction,
    the value quoted. The same for ``advertise_host`` and the admin server's host."""
    from meshkit.errors import ConfigError

    for make in (lambda: _serve_opts(host=host, admin=None),
                 lambda: _serve_opts(advertise_host=host, admin=None),
                 lambda: AdminOptions(host=host)):
        with pytest.raises(ConfigError, match="IP address") as info:
            make()
        assert repr(host) in str(info.value)


@pytest.mark.parametrize("host", ["::1", "[::1]", "::", "[::]", "fe80::1%eth0", "127.0.0.1",
                                  "0.0.0.0", "localhost", "svc.ns.svc.cluster.local.",
                                  "my_host", "10.0.0.5", "[fe80::1%eth0.100]", "fe80::1%12",
                                  "fe80::1%en~1_a-b"])
def test_addresses_and_names_are_accepted_as_hosts(host: str) -> None:
    """Every documented spelling of a host passes: IPv6 bracketed or not (with a zone),
    IPv4, the wildcards, DNS names (a trailing dot, an underscore as Docker names have)."""
    assert _serve_opts(host=host, admin=None).host == host
    assert _serve_opts(advertise_host=host, admin=None).advertise_host == host
    assert AdminOptions(host=host).host == host


def test_ipv4_mapped_loopback_and_wildcard_are_what_they_map() -> None:
    """``::ffff:127.0.0.1`` is the IPv4 loopback and ``::ffff:0.0.0.0`` the IPv4
    wildcard, spelled as IPv6; Python 3.11's ``ipaddress`` says neither, so a server on
    ``::ffff:0.0.0.0`` registered that wildcard as its address (not its host name), and
    an admin server on ``::ffff:127.0.0.1`` beside a public host was advertised in
    ``admin_host``, where no other machine reaches it."""
    from meshkit._hosts import is_loopback, is_unspecified

    for host in ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]", "::ffff:7f00:1", "::1",
                 "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("::ffff:0.0.0.0", "[::ffff:0.0.0.0]", "::", "0.0.0.0"):
        assert is_unspecified(host), host
    for host in ("::ffff:10.0.0.1", "::ffff:1.2.3.4", "10.0.0.1", "example.com"):
        assert not is_loopback(host) and not is_unspecified(host), host


async def test_jwks_server_on_a_bracketed_ipv6_host_binds_and_names_it_once() -> None:
    """``JWKSServer.start("[::1]")`` (the bracketed spelling ``ServeOptions`` and the admin
    server take) raised ``socket.gaierror``: the brackets reached the bind; and its ``url``
    would have doubled them. It binds ``::1`` and its URL is ``http://[::1]:port/...``."""
    from meshkit.auth import JWKSServer, KeySet

    server = JWKSServer(KeySet.generate())
    await server.start("[::1]")
    try:
        assert server.url.startswith("http://[::1]:")
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
                    http.get(server.url) as resp):
            assert resp.status == 200
            assert (await resp.json())["keys"]
    finally:
        await server.stop()


async def test_an_ipv6_host_with_a_two_digit_zone_is_served_and_dialed(
    registry: LocalRegistry,
) -> None:
    """``ServeOptions(host="::1%11")`` (check_host takes numeric zones: a link-local
    address on an interface of index 10 or more, as containers and Kubernetes nodes with a
    few veth interfaces have) failed ``MeshServer.start()`` with ``RuntimeError: Failed to
    bind to address [::1%11]:0``, and an instance registered with that host was never
    reached by dial() (every call ``UNAVAILABLE``, "Misformatted domain name"): grpc
    percent-decodes ``host:port`` text, so ``%11`` was the byte 0x11. The zone's ``%`` is
    now written ``%25`` in that text (RFC 6874: ``[::1%2511]:<port>``, what plain grpc
    binds and dials): the server binds, registers the host as it is, and dial() reaches
    it."""
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=_serve_opts(host="::1%11", admin=None))
    inst = await srv.start()
    try:
        assert inst.host == "::1%11"
        assert inst.address == f"[::1%2511]:{inst.port}"
        opts = meshkit.DialOptions(insecure=True, retry=None, outlier=None,
                                   resolve_timeout_s=3.0)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
    finally:
        await srv.drain()


async def test_a_server_on_a_bracketed_escaped_zone_host_is_dialed(
    registry: LocalRegistry,
) -> None:
    """``ServeOptions(host="[::1%2511]")`` (the URI form of zone 11, which uri_host keeps):
    the server bound zone 11 but registered ``"::1%2511"`` (brackets dropped, the escape
    kept), whose address escaped the zone again, ``[::1%252511]:<port>`` (zone 2511), so
    dial() never reached the server it had just registered. A bracketed host in URI form
    now names the unescaped zone everywhere: registered ``"::1%11"``, dialed at
    ``[::1%2511]``."""
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=_serve_opts(host="[::1%2511]", admin=None))
    inst = await srv.start()
    try:
        assert inst.host == "::1%11"
        assert inst.address == f"[::1%2511]:{inst.port}", inst.address
        opts = meshkit.DialOptions(insecure=True, retry=None, outlier=None,
                                   resolve_timeout_s=3.0)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
    finally:
        await srv.drain()


@pytest.mark.parametrize(("host", "text"), [
    ("::1", "[::1]"), ("[::1]", "[::1]"), ("fe80::1%eth0", "[fe80::1%25eth0]"),
    ("fe80::1%11", "[fe80::1%2511]"), ("[fe80::1%11]", "[fe80::1%2511]"),
    ("fe80::1%25", "[fe80::1%2525]"),  # zone 25, not an escape of nothing
    ("[fe80::1%25eth0]", "[fe80::1%25eth0]"),  # URI text already: not escaped twice
    ("127.0.0.1", "127.0.0.1"), ("localhost", "localhost"),
])
def test_an_ipv6_zone_is_percent_escaped_in_host_port_text(host: str, text: str) -> None:
    """The host part of ``host:port`` and URI text (the server's bind address, the
    ``Instance.address`` that dial() connects to, the admin and JWKS URLs) writes a zone's
    ``%`` as ``%25`` (RFC 6874), once; ``Instance.host`` keeps the address as given."""
    from meshkit._hosts import uri_host
    from meshkit.discovery import Instance

    assert uri_host(host) == text
    assert uri_host(text) == text
    inst = Instance(service="echo", instance_id="e1", host=host, port=50051)
    assert inst.host == host
    assert inst.address == f"{text}:50051"


def test_a_zoned_admin_host_is_escaped_in_the_admin_url_not_in_the_prometheus_target() -> None:
    """``meshkit services`` probes ``admin_url`` with aiohttp, a URL: the zone's ``%`` is
    ``%25`` there (RFC 6874), as in ``Instance.address``. ``meshkit prometheus-targets``
    hands ``admin_address`` to Prometheus, which builds the scrape URL from the target
    itself (escaping the ``%``): the target keeps the zone as it is, as it did."""
    from meshkit._cli.prometheus import target_groups
    from meshkit._cli.services import admin_address, admin_url
    from meshkit.discovery import Instance

    inst = Instance(service="echo", instance_id="e1", host="fe80::1%eth0", port=5000,
                    meta={"admin_port": "9100"})
    assert admin_url(inst) == "http://[fe80::1%25eth0]:9100"
    assert admin_address(inst) == "[fe80::1%eth0]:9100"
    assert target_groups([inst], [])[0]["targets"] == ["[fe80::1%eth0]:9100"]
