"""EtcdRegistry: options and URIs, then its etcd-specific rules against a real etcd node
(lease loss, a key lost while its lease lives, watch resume after a disconnect and after a
compaction, a replaced store, TLS with client certificates). The Registry promises shared
with the other backends are in test_conformance.py; a 3-member cluster under a routing mesh
is in test_etcd_cluster.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import textwrap
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance, registry_from_uri
from meshkit.errors import ConfigError, RegistryError
from tests.discovery._forking import (
    check_connections_after_close,
    check_lookup_after_fork,
    check_master_undisturbed,
    check_workers_jitter,
    connections_after_close_script,
    forked,
    lookup_after_fork_script,
    parent_after_fork_script,
    workers_jitter_script,
)
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.conftest import SlowDns
from tests.support.echo import add_echo
from tests.support.etcd import EtcdCluster, EtcdTls, require_etcd_binary, running_etcd
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop
from tests.support.ports import free_port
from tests.support.skips import asyncio_loop_only
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

FAST: dict[str, Any] = {"ttl_s": 2, "request_timeout_s": 1.0, "operation_timeout_s": 1.0,
                        "backoff_base_s": 0.05,
                        "backoff_max_s": 0.3}


# -- options and URIs (no etcd) ----------------------------------------------------------------
def test_uri_forms_and_etcdctl_environment(tmp_path: Path) -> None:
    """etcd:// lists members (default port 2379), etcd+https:// takes TLS files, etcd://
    alone takes ETCDCTL_ENDPOINTS, and ETCDCTL_CACERT/CERT/KEY apply."""
    o = EtcdOptions.from_uri("etcd://10.0.0.1:2379,10.0.0.2,[::1]:23790?ttl_s=5&prefix=/p/",
                             environ={})
    assert o.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://[::1]:23790")
    assert (o.ttl_s, o.keepalive_interval_s, o.prefix, o.fault_grace_s) == (5, 5 / 3, "/p/", 5)
    env = {"ETCDCTL_ENDPOINTS": "https://a:1,https://b:2"}
    assert EtcdOptions.from_uri("etcd://", environ=env).endpoints == ("https://a:1",
                                                                      "https://b:2")
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    env = {"ETCDCTL_CACERT": str(tmp_path / "ca.pem"), "ETCDCTL_CERT": str(tmp_path / "c.pem"),
           "ETCDCTL_KEY": str(tmp_path / "c.key")}
    o = EtcdOptions.from_uri("etcd+https://h:2379", environ=env)
    assert (o.endpoints, o.scheme, o.ca_file, o.cert_file) == (
        ("https://h:2379",), "https", env["ETCDCTL_CACERT"], env["ETCDCTL_CERT"])
    assert "c.key" not in repr(o)
    reg = registry_from_uri("etcd://127.0.0.1:2379")
    assert isinstance(reg, EtcdRegistry) and isinstance(reg, meshkit.Registry)


@pytest.mark.parametrize(("uri", "quoted"), [
    ("etcd://h:2379?ttl_s=1.5", "1.5"),
    ("etcd://h:2379?ttl_s=3&keepalive_interval_s=3", "3.0"),
    ("etcd://h:2379?request_timeout_s=-1", "-1.0"),
    ("etcd://h:99999", "h:99999"),
    ("etcd://h:0", "h:0"),
    ("etcd://h:2379/x", "/x"),
    ("etcd://h:2379?colour=red", "colour"),
    ("etcd://h:2379?prefix=nolead/", "nolead/"),
    ("etcd://h:2379?ca_file=/nonexistent.pem", "/nonexistent.pem"),
    ("etcd://u:p@h:2379", r"'etcd://\*\*\*@h:2379'"),
    ("etcdx://h:2379", "etcdx"),
])
def test_bad_uris_fail_at_construction(uri: str, quoted: str) -> None:
    """A bad URI or option fails when the registry is built, quoting the bad part."""
    with pytest.raises(ConfigError, match=quoted.replace("?", r"\?")):
        EtcdOptions.from_uri(uri, environ={})


@pytest.mark.parametrize(("uri", "says", "shown"), [
    ("etcd://root:{pw}@127.0.0.1:2379", "must not carry user info",
     "'etcd://***@127.0.0.1:2379'"),
    ("etcd+https://{pw}@h1:2379,h2:2379?ttl_s=5", "must not carry user info",
     "'etcd+https://***@h1:2379,h2:2379?ttl_s=5'"),
    ("etcd://127.0.0.1:2379?ttl_s=5&password={pw}", "unknown option 'password'",
     "'etcd://127.0.0.1:2379?ttl_s=5&password=***'"),
    ("etcd://127.0.0.1:2379?ttl_s=x&token={pw}", "ttl_s must be a number",
     "'etcd://127.0.0.1:2379?ttl_s=x&token=***'"),
    # a password holding an unencoded '/', '?' or '#' (generated, base64 passwords): the
    # netloc ended there, so the "takes no path" error quoted '/<pw>@127.0.0.1:2379' and
    # the port check 'root:<pw>'
    ("etcd://root:pa/{pw}@127.0.0.1:2379", "must not carry user info",
     "'etcd://***@127.0.0.1:2379'"),
    ("etcd://root:{pw}?x@127.0.0.1:2379", "must not carry user info",
     "'etcd://***@127.0.0.1:2379'"),
    ("etcd+https://root:pa#{pw}@h1:2379?ttl_s=5", "must not carry user info",
     "'etcd+https://***@h1:2379?ttl_s=5'"),
    # an '@' in a query value is user info unless the key is a TLS file option, and the
    # netloc left before a '?' of the password is refused unquoted
    ("etcd://root:{pw}?ttl_s=5@127.0.0.1:2379", "must not carry user info",
     "'etcd://***@127.0.0.1:2379'"),
    ("etcd://root:{pw}?ca_file=x@127.0.0.1:2379", "must not carry user info",
     "'etcd://***@127.0.0.1:2379'"),
])
def test_uri_errors_never_quote_a_password(uri: str, says: str, shown: str) -> None:
    """An etcd URI refused for its user info (etcdctl's ``--user root:<password>`` moved
    into the URI) or a query key that is no option (``?password=...``) is quoted with the
    user info and the value of that key masked, as the Consul URI's errors are; the
    password was quoted in clear (the netloc, or the whole URI). User info is refused
    whatever its password holds (any '@' after '//')."""
    secret = "S3cretPw-do-not-print"
    with pytest.raises(ConfigError) as info:
        EtcdOptions.from_uri(uri.format(pw=secret), environ={})
    text = str(info.value)
    assert secret not in text, text
    assert says in text and shown in text, text


@pytest.mark.parametrize("build", [
    lambda: EtcdOptions(endpoints=("[::1:2379",)),
    lambda: EtcdOptions(endpoints=("http://[::1:2379",)),
    lambda: EtcdOptions.from_uri("etcd://[::1:2379", environ={}),
    lambda: EtcdOptions.from_uri("etcd://h:2379,[::1:2379", environ={}),
    lambda: EtcdOptions.from_env({"ETCDCTL_ENDPOINTS": "[::1:2379"}),
    lambda: registry_from_uri("etcd://[::1:2379"),
    lambda: registry_from_uri("consul://[::1:8500"),
    lambda: registry_from_uri("local://[::1:1/x"),
    lambda: registry_from_uri("bogus://[::1:1"),
], ids=["endpoint", "endpoint-scheme", "from_uri", "second", "env", "registry-etcd",
        "registry-consul", "registry-local", "registry-unknown"])
def test_an_unbalanced_bracket_is_a_config_error_quoting_the_uri(
        build: Callable[[], object]) -> None:
    """``registry_from_uri("etcd://[::1:2379")`` (a typo'd IPv6 literal), the same Consul
    URI and an etcd endpoint ``[::1:2379`` raised urllib's bare ``ValueError('Invalid
    IPv6 URL')``, naming neither the option nor the value, where every other bad URI or
    address is a ConfigError quoting it (``meshkit services --registry`` printed a
    traceback)."""
    with pytest.raises(ConfigError, match=r"\[::1:") as info:
        build()
    assert "Invalid IPv6 URL" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_tls_file_path_holding_an_at_sign_is_no_user_info(tmp_path: Path) -> None:
    """96bdcde refused any '@' after '//' as user info. An '@' is plain URI text in a
    query (RFC 3986 pchar), and TLS files live in such directories: a systemd template
    unit's credentials (``/run/credentials/orderd@1.service/``), an AD-joined machine's
    home (``/home/john@corp.com/``). The README says every etcd field is also a URI query
    parameter, but ``?ca_file=<that path>`` failed "etcd URI must not carry user info,
    got 'etcd+https://***@1.service/ca.pem'". Now an '@' in the value of ca_file,
    cert_file or key_file is taken as written; one anywhere else is still refused, the
    error saying to write it %40 (which works)."""
    ca_dir = tmp_path / "orderd@1.service"
    ca_dir.mkdir()
    ca = ca_dir / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    options = EtcdOptions.from_uri(f"etcd+https://127.0.0.1:2379?ca_file={ca}", environ={})
    assert options.ca_file == str(ca)
    assert options.endpoints == ("https://127.0.0.1:2379",)
    with pytest.raises(ConfigError, match="%40"):
        EtcdOptions.from_uri("etcd://127.0.0.1:2379?prefix=/a@b/", environ={})
    assert EtcdOptions.from_uri("etcd://127.0.0.1:2379?prefix=/a%40b/",
                                environ={}).prefix == "/a@b/"


def test_an_unbalanced_bracket_after_user_info_is_quoted_masked() -> None:
    """Its error quotes the URI or address with the user info masked, as the others."""
    for build in (lambda: registry_from_uri("etcd://root:SECRETXYZ@[::1:2379"),
                  lambda: registry_from_uri("consul://tok:SECRETXYZ@[::1:8500"),
                  lambda: EtcdOptions(endpoints=("http://root:SECRETXYZ@[::1:2379",))):
        with pytest.raises(ConfigError) as info:
            build()
        assert "SECRETXYZ" not in str(info.value) and "***@[::1:" in str(info.value)


def test_bad_option_combinations() -> None:
    """Mixed schemes, a lone key file and TLS files on http endpoints are refused."""
    with pytest.raises(ConfigError, match="one scheme"):
        EtcdOptions(endpoints=("http://a:1", "https://b:2"))
    with pytest.raises(ConfigError, match="go together"):
        EtcdOptions(endpoints=("https://a:1",), key_file=__file__)
    with pytest.raises(ConfigError, match="need https"):
        EtcdOptions(endpoints=("http://a:1",), ca_file=__file__)
    with pytest.raises(ConfigError, match="sequence"):
        EtcdOptions(endpoints="http://a:1")  # type: ignore[arg-type]


def test_a_lease_longer_than_etcd_grants_is_refused() -> None:
    """etcd refuses a lease grant above its MaxLeaseTTL, 9000000000 s ("etcdserver: too
    large lease TTL"): such a ttl_s passed the options and every register() failed. It
    is a ConfigError quoting it; the longest lease etcd grants is accepted."""
    for ttl in (9_000_000_001, 1e10):
        with pytest.raises(ConfigError, match="ttl_s must be <= 9000000000") as err:
            EtcdOptions(ttl_s=ttl)
        assert repr(ttl) in str(err.value)
    with pytest.raises(ConfigError, match=r"10000000000\.0"):
        EtcdOptions.from_uri("etcd://h:2379?ttl_s=1e10", environ={})
    assert EtcdOptions(ttl_s=9_000_000_000).ttl_s == 9_000_000_000


def test_an_endpoint_without_a_host_is_refused() -> None:
    """``http://`` is no endpoint (not host ``http`` on the default port)."""
    with pytest.raises(ConfigError, match="got 'http://'"):
        EtcdOptions(endpoints=("http://",))


async def test_unreachable_etcd_fails_register_and_keeps_watch_waiting() -> None:
    """With no member answering, register raises RegistryError and a watch yields nothing
    while status() reports the failed read."""
    reg = EtcdRegistry(EtcdOptions(endpoints=(f"127.0.0.1:{free_port()}",), **FAST))
    try:
        with pytest.raises(RegistryError, match="cannot register"):
            await reg.register(make_instance("svc", 1))
        watcher = Collector(reg, "svc")
        await until(lambda: reg.status().read_errors >= 2, what="failed reads")
        assert watcher.queue.empty() and reg.status().readable is False
        await watcher.stop()
    finally:
        await reg.close()


async def test_many_watches_do_not_starve_the_lease() -> None:
    """Each watch holds one connection for its endless watch stream; with 100 watches on a
    registry its register (lease grant, put) still gets a connection (aiohttp's default
    connector allows 100 in all). A minimal etcd JSON gateway on loopback plays etcd
    (shapes as in etcd's gRPC-gateway API: kv/range, watch, lease/grant, kv/put)."""
    from aiohttp import web

    header = {"cluster_id": "14841639068965178418", "member_id": "1", "revision": "5",
              "raft_term": "2"}
    streams = 0
    stop = asyncio.Event()

    async def kv_range(request: web.Request) -> web.Response:
        return web.json_response({"header": header, "kvs": [], "count": "0"})

    async def watch(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write((json.dumps({"result": {"header": header, "created": True}})
                          + "\n").encode())
        streams += 1
        await stop.wait()
        return resp

    async def grant(request: web.Request) -> web.Response:
        return web.json_response({"header": header, "ID": "7587", "TTL": "10"})

    async def put(request: web.Request) -> web.Response:
        return web.json_response({"header": header})

    async with _loopback_gateway({"/v3/kv/range": kv_range, "/v3/watch": watch,
                                  "/v3/lease/grant": grant, "/v3/kv/put": put}) as port:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{port}",), ttl_s=3,
                                       request_timeout_s=0.5, operation_timeout_s=1.5))
        watchers = [Collector(reg, f"svc{i}") for i in range(100)]
        try:
            async with asyncio.timeout(10):
                for w in watchers:
                    await w.next()
                await until(lambda: streams >= 100, what="100 watch streams")
            await reg.register(make_instance("gateway", 1))
        finally:
            stop.set()
            for w in watchers:
                w.task.cancel()
            await asyncio.gather(*(w.task for w in watchers), return_exceptions=True)
            await reg.close()


@contextlib.asynccontextmanager
async def _loopback_gateway(routes: dict[str, Callable[..., Any]]) -> AsyncIterator[int]:
    """An aiohttp app answering POSTs of ``routes`` (path -> handler) on a loopback port
    (yielded): a few etcd JSON gateway endpoints played by a test."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_a_watch_answered_with_an_error_whose_body_stalls_is_retried() -> None:
    """A member (or a proxy before it) answered the watch request with error headers
    (HTTP 503) and then sent no body: the watch read that body without a time limit and
    waited on it for good (no read error, no retry, no failover). The error's body is now
    read within ``request_timeout_s``, after which the watch counts a failed read and
    tries again."""
    from aiohttp import web

    watches = 0

    async def range_(_request: web.Request) -> web.Response:
        return web.json_response({"header": {"cluster_id": "1", "revision": "5"}})

    async def watch(request: web.Request) -> web.StreamResponse:
        nonlocal watches
        watches += 1
        resp = web.StreamResponse(status=503, headers={"Content-Length": "100"})
        await resp.prepare(request)
        await asyncio.Event().wait()  # the body never comes
        return resp

    async with _loopback_gateway({"/v3/kv/range": range_, "/v3/watch": watch}) as port:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"127.0.0.1:{port}",),
                                       **{**FAST, "ttl_s": 10, "request_timeout_s": 0.5}))
        try:
            watcher = Collector(reg, "svc")
            assert await watcher.next() == frozenset()
            await until(lambda: watches >= 2, timeout_s=5, what="the watch to try again")
            assert reg.status().read_errors >= 1
            await watcher.stop()
        finally:
            await reg.close()


class _Gateway:
    """A minimal in-memory etcd v3 JSON gateway on loopback for the write paths (shapes of
    etcd's gRPC-gateway API: lease/grant, lease/keepalive, lease/revoke, kv/put,
    kv/deleterange, and kv/txn with ``mod_revision`` compares and range requests), whose
    calls can be made to fail: a path in :attr:`failing` answers HTTP 503 ``UNAVAILABLE``
    (gRPC code 14), as a member without a leader does. :attr:`calls` counts the requests
    by path; while :attr:`hold_txn` is set, a txn is answered only once it is cleared
    (:attr:`txn_waiting` is set meanwhile).

    ``api="/v3beta"`` plays etcd 3.3, whose gateway serves ``/v3beta`` only (and binds
    LeaseRevoke to ``/v3beta/kv/lease/revoke``); any other path answers a plain-text 404,
    as Go's HTTP server does, and is recorded in :attr:`not_found`."""

    def __init__(self, api: str = "/v3") -> None:
        self.api = api
        self.not_found: list[str] = []
        self.kv: dict[bytes, tuple[bytes, str, int]] = {}  # key -> (value, lease, mod rev)
        self.leases: set[str] = set()
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}
        self.revision = 5
        self.hold_txn: asyncio.Event | None = None
        self.txn_waiting = asyncio.Event()
        self._next_lease = 7587
        self._runner: Any = None
        self.endpoint = ""

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        path = request.path.removeprefix(self.api)
        body = await request.json()
        self.calls[path] = self.calls.get(path, 0) + 1
        header = {"cluster_id": "1", "member_id": "1", "revision": str(self.revision),
                  "raft_term": "2"}
        if path in self.failing:
            return web.json_response({"error": "etcdserver: no leader", "code": 14,
                                      "message": "etcdserver: no leader"}, status=503)
        if path == "/lease/grant":
            self._next_lease += 1
            self.leases.add(str(self._next_lease))
            return web.json_response({"header": header, "ID": str(self._next_lease),
                                      "TTL": body["TTL"]})
        if path == "/lease/keepalive":
            ttl = "10" if body["ID"] in self.leases else "0"
            return web.json_response({"result": {"header": header, "ID": body["ID"],
                                                 "TTL": ttl}})
        if path == ("/kv/lease/revoke" if self.api == "/v3beta" else "/lease/revoke"):
            self.revoke(body["ID"])
            return web.json_response({"header": header})
        if path == "/kv/put":
            if body["lease"] not in self.leases:
                return web.json_response({"error": "etcdserver: requested lease not found",
                                          "code": 5, "message": "requested lease not found"},
                                         status=404)
            self.put(base64.b64decode(body["key"]), base64.b64decode(body["value"]),
                     body["lease"])
            return web.json_response({"header": {**header, "revision": str(self.revision)}})
        if path == "/kv/deleterange":
            deleted = self.delete(base64.b64decode(body["key"]))
            return web.json_response({"header": header, "deleted": str(int(deleted))})
        if path == "/kv/txn":
            answer = self._txn(body)
            if self.hold_txn is not None:  # read now, answered later
                self.txn_waiting.set()
                await self.hold_txn.wait()
            return web.json_response({"header": header, **answer})
        return web.json_response({"error": "not implemented", "code": 12}, status=501)

    def _txn(self, body: dict[str, Any]) -> dict[str, Any]:
        """A txn's answer: ``mod_revision`` EQUAL compares (a missing key's is 0), then
        the range requests of the branch taken."""
        ok = all(c["target"] == "MOD" and c.get("result", "EQUAL") == "EQUAL" and int(
            c.get("mod_revision") or 0) == self.kv.get(base64.b64decode(c["key"]),
                                                       (b"", "", 0))[2]
                 for c in body.get("compare") or ())
        responses = []
        for op in body.get("success" if ok else "failure") or ():
            key = base64.b64decode(op["request_range"]["key"])
            found = self.kv.get(key)
            kvs = [] if found is None else [{
                "key": op["request_range"]["key"],
                "value": base64.b64encode(found[0]).decode(),
                "lease": found[1], "mod_revision": str(found[2])}]
            responses.append({"response_range": {"kvs": kvs, "count": str(len(kvs))}})
        return {"succeeded": ok, "responses": responses}

    def put(self, key: bytes, value: bytes, lease: str) -> None:
        """Store ``key`` (a new revision)."""
        self.revision += 1
        self.kv[key] = (value, lease, self.revision)

    def delete(self, key: bytes) -> bool:
        """Delete ``key`` (a new revision if it was there); whether it was."""
        if self.kv.pop(key, None) is None:
            return False
        self.revision += 1
        return True

    def revoke(self, lease: str) -> None:
        """Drop ``lease`` and its keys (a revoke, or an expiry while unreachable)."""
        self.leases.discard(lease)
        self.kv = {k: v for k, v in self.kv.items() if v[1] != lease}

    def keys(self) -> set[str]:
        """The instances' keys stored now, decoded (not the last-seen records)."""
        return {k.decode() for k in self.kv if b"@last-seen/" not in k}

    def records(self) -> set[str]:
        """The last-seen records' keys stored now, decoded, without the common part
        (``<service>/<instance_id>``)."""
        return {k.decode().removeprefix("/meshkit/services@last-seen/") for k in self.kv
                if b"@last-seen/" in k}

    async def __aenter__(self) -> _Gateway:
        from aiohttp import web

        async def not_found(request: web.Request) -> web.Response:
            self.not_found.append(request.path)
            return web.Response(status=404, text="404 page not found\n")

        app = web.Application()
        app.router.add_post(self.api + "/{tail:.*}", self._handle)
        app.router.add_post("/{tail:.*}", not_found)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.endpoint = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def gateway() -> AsyncIterator[_Gateway]:
    """A fresh in-memory etcd gateway."""
    async with _Gateway() as gw:
        yield gw


def _gateway_registry(gateway: _Gateway, registries: list[EtcdRegistry]) -> EtcdRegistry:
    reg = EtcdRegistry(EtcdOptions(endpoints=(gateway.endpoint,), ttl_s=3,
                                   keepalive_interval_s=0.05, request_timeout_s=0.5,
                                   operation_timeout_s=0.2, backoff_base_s=0.01,
                                   backoff_max_s=0.02))
    registries.append(reg)
    return reg


async def test_failed_deregister_raises_and_the_keep_alive_deletes_the_instance(
        gateway: _Gateway, registries: list[EtcdRegistry]) -> None:
    """A deregister whose delete fails raises RegistryError and withdraws the instance all
    the same: the keep-alive deletes its key and record once etcd answers, and a lease loss
    does not put it back (it used to stay registered, renewed and put back, until a retried
    deregister, which a drain never makes); the other instance stays registered, and it is
    never left as a live key that nothing deletes."""
    reg = _gateway_registry(gateway, registries)
    a, b = make_instance("svc", 1), make_instance("svc", 2)
    await reg.register(a)
    await reg.register(b)
    gateway.failing.add("/kv/deleterange")
    with pytest.raises(RegistryError, match="cannot deregister 'svc-1'"):
        await reg.deregister(a)
    assert gateway.keys() == {"/meshkit/services/svc/svc-1", "/meshkit/services/svc/svc-2"}
    gateway.failing.clear()
    await until(lambda: gateway.keys() == {"/meshkit/services/svc/svc-2"}
                and gateway.records() == {"svc/svc-2"},
                what="the withdrawn instance's key and record deleted by the keep-alive")
    lease = reg._lease
    assert lease is not None
    gateway.revoke(str(lease))  # a lease loss: only the instance still registered comes back
    await until(lambda: reg._lease != lease and len(gateway.keys()) == 1,
                what="the remaining instance put again")
    assert gateway.keys() == {"/meshkit/services/svc/svc-2"}
    assert gateway.records() == {"svc/svc-2"}  # under their own lease: not lost
    await reg.deregister(a)  # again: nothing left, no error
    await reg.register(a)  # registered anew: kept, its record too
    await asyncio.sleep(0.3)  # several keep-alive rounds
    assert gateway.keys() == {"/meshkit/services/svc/svc-1", "/meshkit/services/svc/svc-2"}
    assert gateway.records() == {"svc/svc-1", "svc/svc-2"}


async def test_registered_again_after_a_failed_deregister_is_kept(
        gateway: _Gateway, registries: list[EtcdRegistry]) -> None:
    """An instance registered again while the keys of its failed deregistration still wait
    for the keep-alive's delete is not deleted by it: neither its key nor its record."""
    reg = _gateway_registry(gateway, registries)
    a = make_instance("svc", 1)
    await reg.register(a)
    gateway.failing.add("/kv/deleterange")
    with pytest.raises(RegistryError, match="cannot deregister 'svc-1'"):
        await reg.deregister(a)
    await reg.register(a)  # (the keep-alive cannot delete them yet)
    gateway.failing.clear()
    await asyncio.sleep(0.3)  # several keep-alive rounds
    assert gateway.keys() == {"/meshkit/services/svc/svc-1"}
    assert gateway.records() == {"svc/svc-1"}
    assert not reg._stale


async def test_etcd_3_3_gateway_paths_are_spoken(registries: list[EtcdRegistry]) -> None:
    """etcd 3.3 serves its gateway at /v3beta only ("etcd v3.3 uses [CLIENT-URL]/v3beta/*",
    etcd.io/docs/v3.3/dev-guide/api_grpc_gateway/): the first call's plain 404 under /v3 is
    retried under /v3beta, which the registry then keeps using (register, keep-alive,
    deregister and the lease's revoke at 3.3's /v3beta/kv/lease/revoke)."""
    async with _Gateway(api="/v3beta") as gateway:
        reg = _gateway_registry(gateway, registries)
        a = make_instance("svc", 1)
        await reg.register(a)
        assert gateway.keys() == {"/meshkit/services/svc/svc-1"}
        assert gateway.not_found == ["/v3/lease/grant"]  # one 404, then /v3beta for good
        lease = reg._lease
        gateway.revoke(str(lease))  # a lease loss: the keep-alive finds it, puts a again
        await until(lambda: reg._lease != lease and len(gateway.keys()) == 1,
                    what="the instance put again under a new lease")
        await reg.deregister(a)
        # deleted, and both leases (the instances', the last-seen records') revoked
        assert gateway.keys() == set() and gateway.records() == set()
        assert gateway.leases == set()
        assert gateway.not_found == ["/v3/lease/grant"]


async def test_a_plain_404_is_reported_as_http_404(registries: list[EtcdRegistry]) -> None:
    """A member that serves neither gateway prefix (not etcd, or a path it does not know)
    answers a plain-text 404: register() raises RegistryError quoting the status and body,
    not a JSON decode error (the status is checked before the body is parsed)."""
    async with _Gateway(api="/nothing") as gateway:
        reg = _gateway_registry(gateway, registries)
        with pytest.raises(RegistryError, match="HTTP 404, gRPC code -1: 404 page not found"
                           ) as info:
            await reg.register(make_instance("svc", 1))
        assert "JSON" not in str(info.value) and "Expecting value" not in str(info.value)
        assert gateway.not_found[:2] == ["/v3/lease/grant", "/v3beta/lease/grant"]


async def test_register_again_replaces_and_a_failed_put_keeps_the_previous_one(
        gateway: _Gateway, registries: list[EtcdRegistry]) -> None:
    """Registering the same service and id again (another address: a restarted process)
    replaces it with one put over its key; if that put fails, the previous registration
    is still there and still owned (its value, its record, kept by the key check). The
    same id registered for another service is another instance: both keys stay, and a
    failed put of it leaves the first as it was."""
    reg = _gateway_registry(gateway, registries)
    old = make_instance("svc", 1)
    restarted = make_instance("svc", 1, port=42001)
    other = make_instance("other", 1, instance_id="svc-1")
    key = b"/meshkit/services/svc/svc-1"
    await reg.register(old)
    gateway.failing.add("/kv/put")
    with pytest.raises(RegistryError, match="cannot register 'svc-1'"):
        await reg.register(restarted)
    with pytest.raises(RegistryError, match="cannot register 'svc-1'"):
        await reg.register(other)
    gateway.failing.clear()
    assert gateway.keys() == {key.decode()}
    assert json.loads(gateway.kv[key][0])["port"] == old.port
    assert gateway.records() == {"svc/svc-1"}
    assert reg._owned == {("svc", "svc-1"): old}
    await reg.register(restarted)
    assert gateway.keys() == {key.decode()}
    assert json.loads(gateway.kv[key][0])["port"] == restarted.port
    await reg.register(other)
    assert gateway.keys() == {key.decode(), "/meshkit/services/other/svc-1"}
    assert gateway.records() == {"svc/svc-1", "other/svc-1"}
    assert reg._owned == {("svc", "svc-1"): restarted, ("other", "svc-1"): other}


async def test_an_unanswered_put_whose_delete_failed_is_deleted_later(
        gateway: _Gateway, registries: list[EtcdRegistry],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A put that etcd applied but whose answer never came (register() raised) of an
    instance not registered is deleted by the keep-alive, which tries again while etcd
    refuses deletes; the same id registered for another service, and an unanswered put
    of an instance registered already, keep their keys; a key registered after all
    meanwhile is not deleted."""
    reg = _gateway_registry(gateway, registries)
    kept = make_instance("svc", 1)
    lost = make_instance("other", 1, instance_id="svc-1")
    await reg.register(kept)
    real_post = reg._post

    async def unanswered(path: str, body: Any, **kw: Any) -> Any:
        answer = await real_post(path, body, **kw)
        if path == "/kv/put" and not base64.b64decode(body["key"]).startswith(
                b"/meshkit/services@"):
            raise TimeoutError  # applied, the answer lost
        return answer

    monkeypatch.setattr(reg, "_post", unanswered)
    gateway.failing.add("/kv/deleterange")
    for inst in (lost, kept):  # kept: registered already, its key stays its own
        with pytest.raises(RegistryError, match="cannot register 'svc-1'"):
            await reg.register(inst)
    monkeypatch.setattr(reg, "_post", real_post)
    both = {"/meshkit/services/svc/svc-1", "/meshkit/services/other/svc-1"}
    assert gateway.keys() == both
    revision = gateway.kv[b"/meshkit/services/svc/svc-1"][2]
    await until(lambda: gateway.calls.get("/kv/deleterange", 0) >= 2,
                what="the keep-alive trying the delete")
    assert gateway.keys() == both
    gateway.failing.clear()
    await until(lambda: gateway.keys() == {"/meshkit/services/svc/svc-1"},
                what="the unanswered put's key deleted by the keep-alive")
    assert gateway.records() == {"svc/svc-1"}
    assert reg._owned == {("svc", "svc-1"): kept}
    # never deleted (and put back by the key check): the same revision
    assert gateway.kv[b"/meshkit/services/svc/svc-1"][2] == revision

    monkeypatch.setattr(reg, "_post", unanswered)
    gateway.failing.add("/kv/deleterange")
    with pytest.raises(RegistryError, match="cannot register 'svc-1'"):
        await reg.register(lost)
    monkeypatch.setattr(reg, "_post", real_post)
    await reg.register(lost)  # registered after all: no longer a key to delete
    gateway.failing.clear()
    rounds = gateway.calls["/lease/keepalive"]
    await until(lambda: gateway.calls["/lease/keepalive"] >= rounds + 3,
                what="three more keep-alive rounds")
    assert gateway.keys() == both
    assert gateway.records() == {"svc/svc-1", "other/svc-1"}


async def test_a_lost_last_seen_lease_is_granted_again_with_every_record(
        gateway: _Gateway, registries: list[EtcdRegistry]) -> None:
    """The last-seen records' lease is renewed by the keep-alive (every
    ``last_seen_ttl_s / 10``); found lost (TTL 0: it expired while etcd was unreachable,
    or was revoked) it is granted anew and every owned instance's record put again, while
    the instances' own lease and keys are left alone."""
    reg = EtcdRegistry(EtcdOptions(endpoints=(gateway.endpoint,), ttl_s=3,
                                   last_seen_ttl_s=3, keepalive_interval_s=0.05,
                                   request_timeout_s=0.5, operation_timeout_s=0.2,
                                   backoff_base_s=0.01, backoff_max_s=0.02))
    registries.append(reg)
    await reg.register(make_instance("svc", 1))
    await reg.register(make_instance("svc", 2))
    lease, seen = reg._lease, reg._seen_lease
    assert seen is not None and seen != lease
    assert gateway.records() == {"svc/svc-1", "svc/svc-2"}
    gateway.revoke(str(seen))
    assert gateway.records() == set()
    await until(lambda: gateway.records() == {"svc/svc-1", "svc/svc-2"}, timeout_s=5,
                what="the records written again under a new last-seen lease")
    assert reg._seen_lease not in (None, seen) and reg._lease == lease
    assert len(gateway.keys()) == 2


async def test_a_deregister_during_the_key_check_is_not_undone(
        gateway: _Gateway, registries: list[EtcdRegistry]) -> None:
    """The owned-key check read an instance's key as lost and a ``deregister`` of it comes
    before the check has put it back: the deregistration wins (the check and
    ``deregister`` take the same lock, and the check puts back only what is owned), so the
    instance is not resurrected, then or at a later check."""
    reg = EtcdRegistry(EtcdOptions(endpoints=(gateway.endpoint,), ttl_s=1,
                                   keepalive_interval_s=0.1, request_timeout_s=5.0,
                                   operation_timeout_s=0.5, backoff_base_s=0.01,
                                   backoff_max_s=0.02))
    registries.append(reg)
    a, b = make_instance("svc", 1), make_instance("svc", 2)
    await reg.register(a)
    await reg.register(b)
    gateway.hold_txn = asyncio.Event()
    gateway.txn_waiting.clear()
    assert gateway.delete(b"/meshkit/services/svc/svc-1")
    async with asyncio.timeout(5):
        await gateway.txn_waiting.wait()  # a check read the key missing; its answer waits
    leaving = asyncio.create_task(reg.deregister(a))
    await asyncio.sleep(0.3)  # the deregistration is under way
    gateway.hold_txn.set()
    await leaving
    assert gateway.keys() == {"/meshkit/services/svc/svc-2"}
    assert gateway.records() == {"svc/svc-2"}
    checks = gateway.calls["/kv/txn"]
    await until(lambda: gateway.calls["/kv/txn"] >= checks + 2, timeout_s=10,
                what="two more checks")
    assert gateway.keys() == {"/meshkit/services/svc/svc-2"}
    assert gateway.records() == {"svc/svc-2"}
    assert reg.status().reopened == 1 and reg.status().writable is True


async def test_the_key_check_costs_one_txn_per_ttl(
        gateway: _Gateway, registries: list[EtcdRegistry]) -> None:
    """The owned-key check is one ``/kv/txn`` (every owned key and record compared in
    it) per ``ttl_s``, run by the keep-alive: with ``keepalive_interval_s = ttl_s / 4`` at
    most one request per four keep-alives (plus one, the first round's), and nothing else
    while no key is lost."""
    reg = EtcdRegistry(EtcdOptions(endpoints=(gateway.endpoint,), ttl_s=1,
                                   keepalive_interval_s=0.25, request_timeout_s=2.0,
                                   operation_timeout_s=2.0, backoff_base_s=0.01,
                                   backoff_max_s=0.02))
    registries.append(reg)
    for n in (1, 2, 3):
        await reg.register(make_instance("svc", n))
    gateway.calls.clear()
    await asyncio.sleep(4.0)
    calls = dict(gateway.calls)
    keepalives, txns = calls.pop("/lease/keepalive", 0), calls.pop("/kv/txn", 0)
    assert calls == {} and keepalives >= 4
    assert 1 <= txns <= keepalives // 4 + 1 and txns <= 5
    assert reg.status().reopened == 0


# -- a real etcd node ---------------------------------------------------------------------------
@pytest.fixture
def binary() -> str:
    """The etcd binary (skip if absent; fail under CI=true)."""
    return require_etcd_binary()


@pytest.fixture(scope="module")
def _shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single real etcd node for the module's tests that need no node of their own."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def node(_shared_node: EtcdCluster) -> EtcdCluster:
    """A real etcd node shared by the module's tests (an etcd start per test cost about
    half a second): each uses services of its own (``unique_service()``), reads nothing
    beyond them, and neither stops, wipes nor compacts the node; running and healthy
    again if a test before left it otherwise. Tests that do, or that read the whole key
    prefix, take ``own_node``."""
    _shared_node.start_member(0)  # a no-op while it runs
    _shared_node.wait_healthy_blocking([0])
    return _shared_node


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A single real etcd node of this test's own."""
    with running_etcd(tmp_path) as cluster:
        yield cluster


@pytest.fixture
async def registries() -> AsyncIterator[list[EtcdRegistry]]:
    """A list to put registries in; each is closed at teardown."""
    made: list[EtcdRegistry] = []
    yield made
    for reg in made:
        await reg.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_lease_loss_registers_again(node: EtcdCluster,
                                          registries: list[EtcdRegistry]) -> None:
    """When the registry's lease is gone (revoked here, as after an expiry during an
    outage) the keep-alive sees TTL 0, grants a new lease and puts every instance again."""
    opts = EtcdOptions(endpoints=tuple(node.endpoints), **FAST)
    owner, reader = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [owner, reader]
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    await owner.register(a)
    await owner.register(b)
    watcher = Collector(reader, service)
    await watcher.until_set({a, b})
    lease = owner._lease
    assert lease is not None
    with capture_logs() as logs:
        await asyncio.to_thread(node.post, 0, "/lease/revoke", {"ID": str(lease)})
        await watcher.until_set(set())  # revoking deletes the keys
        await watcher.until_set({a, b}, timeout_s=2 * opts.ttl_s)
    # The watch may see the last put before the owner has its answer: wait for it.
    await until(lambda: owner.status().reopened == 1, what="the owner to count the re-grant")
    assert owner._lease != lease
    assert any(e["event"] == "etcd lease lost; registering the instances again" for e in logs)
    await watcher.stop()


# -- name lookups: the registry's own resolver threads -----------------------------------------
async def _key_lease(node: EtcdCluster, key: str) -> int | None:
    """The lease of ``key`` on member 0 (0: none), None if absent. Asked over a session of
    its own to the member's IP address: no name lookup, nothing on the default executor
    (which the test fills)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http, \
            http.post(f"{node.endpoints[0]}/v3/kv/range", json={"key": _b64(key)}) as resp:
        data = await resp.json(content_type=None)
    kvs: list[dict[str, Any]] = data.get("kvs") or []
    return int(kvs[0].get("lease") or 0) if kvs else None


def _count_renewals(reg: EtcdRegistry, lease: int) -> list[float]:
    """The times (monotonic) at which a keep-alive of ``reg`` renewed ``lease`` (etcd
    answered it with a TTL above 0) from now on, appended as they come (white-box: wraps
    the registry's request method)."""
    renewed: list[float] = []
    post = reg._post

    async def counting(path: str, body: Any, **kwargs: Any) -> Any:
        data = await post(path, body, **kwargs)
        if (path == "/lease/keepalive" and body.get("ID") == str(lease)
                and int((data.get("result") or {}).get("TTL") or 0) > 0):
            renewed.append(time.monotonic())
        return data

    reg._post = counting  # type: ignore[method-assign]
    return renewed


@pytest.mark.timeout(60)
async def test_the_lease_of_a_busy_process_survives_a_reconnect_by_host_name(
        node: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Load must not deregister an instance that is merely busy. A registry speaking to
    its members by host name (``etcd://etcd-0.etcd:2379`` in a cluster; ``localhost``
    here) whose pooled connections are gone (the member restarted, a load balancer's
    idle timeout) connects again, and aiohttp's default resolver ran the name lookup
    with ``loop.getaddrinfo``, in the loop's default executor. An application that fills
    that executor with its own blocking work (``asyncio.to_thread``, ``run_in_executor
    (None, ...)``) left every keep-alive waiting behind it: each timed out, the lease
    expired and the live instance dropped out of discovery. Now the registry looks names
    up on threads of its own (``meshkit-etcd-dns``). aiohttp's DNS cache (10 s) is turned
    off here, as it will have lapsed by the time a long-lived process reconnects. A
    control without the load (the same reconnect) keeps the key too."""
    original_init = aiohttp.TCPConnector.__init__

    def no_dns_cache(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["use_dns_cache"] = False  # stands for the 10 s cache having lapsed
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.TCPConnector, "__init__", no_dns_cache)
    # the keep-alive renews every ttl_s / 3; the lease ends 3 s unrenewed. The reconnect
    # takes well under 1 s, but its consul twin with a 1 s TTL once lapsed on a loaded
    # 2-core CI box; blocked lookups (the fault) wait 30 s, far past 3 s either way.
    ttl_s = 3

    async def run(loaded: bool) -> list[int | None]:
        release = threading.Event()
        blocked: list[asyncio.Future[bool]] = []
        service = unique_service()
        async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
            reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://localhost:{proxy.port}",),
                                           **{**FAST, "ttl_s": ttl_s}))
            try:
                a = make_instance(service, 1)
                await reg.register(a)
                key = f"{reg.options.prefix}{service}/{a.instance_id}"
                lease = await _key_lease(node, key)
                assert lease, lease
                renewed = _count_renewals(reg, lease)
                if loaded:  # more blocking jobs than the default executor has threads
                    loop = asyncio.get_running_loop()
                    blocked = [loop.run_in_executor(None, release.wait, 30.0)
                               for _ in range(64)]
                # the pooled connections are gone: the next keep-alive connects again
                await proxy.stop()
                await asyncio.sleep(0.1)
                await proxy.start()
                before = len(renewed)
                seen: list[int | None] = []
                # Until three keep-alives renewed the lease through the new connection (the
                # reconnect and its name lookup are behind them) or the key went away or
                # changed lease (a lookup stuck behind the jobs: no keep-alive gets
                # through, and the lease ends ttl_s after the last one before the stop).
                end = time.monotonic() + 2 * ttl_s + 1.0
                while time.monotonic() < end and len(renewed) - before < 3 and (
                        not seen or seen[-1] == lease):
                    seen.append(await _key_lease(node, key))
                    await asyncio.sleep(0.1)
                seen.append(await _key_lease(node, key))
                names = {t.name for t in reg._dns.pool._threads}  # type: ignore[attr-defined]
                assert names and all(n.startswith("meshkit-etcd-dns") for n in names), names
                return [None if s is None else int(s == lease) for s in seen]
            finally:
                release.set()
                await asyncio.gather(*blocked, return_exceptions=True)
                await reg.close()
                threads = list(reg._dns.pool._threads)  # type: ignore[attr-defined]
                await until(lambda: not any(t.is_alive() for t in threads),
                            what="the lookup threads to end after close()")

    # the control and the loaded run side by side (each its own proxy, registry and
    # service), as each mostly watches its key for up to 2 * ttl_s + 1: jobs blocking the
    # loop's default executor would hold up both runs' name lookups, so the loaded run is
    # judged first
    control, loaded = await asyncio.gather(run(loaded=False), run(loaded=True))
    assert set(loaded) == {1}, (
        f"the key of a live, busy process went away or changed lease ({loaded}) after a "
        "reconnect: its keep-alive's name lookup waited behind the default executor's "
        f"blocking jobs (the control without load beside it: {control})")
    assert set(control) == {1}, control  # the reconnect alone costs nothing


async def test_ip_address_endpoints_start_no_lookup_thread(node: EtcdCluster) -> None:
    """Members given by IP address (``http://127.0.0.1:<port>``) cost no name lookup:
    aiohttp connects to the address as is, so the registry's lookup pool
    (``meshkit-etcd-dns``) never starts a thread, through register, a watch and
    keep-alives, and close() leaves none."""
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    try:
        a = make_instance(unique_service(), 1)
        await reg.register(a)
        watcher = Collector(reg, a.service)
        await watcher.until_set({a})
        await asyncio.sleep(1.0)  # a keep-alive or two
        await watcher.stop()
        assert not reg._dns.pool._threads  # type: ignore[attr-defined]
    finally:
        await reg.close()
    assert not reg._dns.pool._threads  # type: ignore[attr-defined]


_FORK_SCRIPT = lookup_after_fork_script("""
    from meshkit.discovery import EtcdOptions, EtcdRegistry

    def registry():
        return EtcdRegistry(EtcdOptions(endpoints=(f"http://localhost:{sys.argv[2]}",),
                                        request_timeout_s=2.0, operation_timeout_s=2.0))

    reg, closed = registry(), registry()
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_look_the_members_up(node: EtcdCluster) -> None:
    """A registry built and used in a parent process and then used in a child made by
    ``os.fork()`` (a pre-fork worker model; multiprocessing's fork start method) reaches
    its members by host name there. The lookup pool (a ThreadPoolExecutor) was inherited:
    its threads do not exist in the child, but its idle semaphore said one was idle, so
    submit() started none and every lookup of a member's name waited for good (each
    request timed out, register() failed, the lease expired). Now the child has a pool of
    its own (``os.register_at_fork``); a registry closed before the fork stays closed in
    the child; the parent's pool serves on. In a subprocess: the test's own process has
    threads a fork would copy."""
    lines, out = forked(_FORK_SCRIPT, str(node.members[0].client_port), timeout_s=40)
    check_lookup_after_fork(lines, out, "the members' names")


_FORK_WHILE_HELD = textwrap.dedent("""
    import asyncio, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
    from tests.support.loops import LoopThread
    from tests.support.tcp_proxy import TcpProxy

    held = sys.argv[3] == "held"
    proxy_loop = LoopThread()

    async def start_proxy():
        proxy = TcpProxy("127.0.0.1", int(sys.argv[2]))
        await proxy.start()
        return proxy

    proxy = proxy_loop.run(start_proxy())
    reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{proxy.port}",), ttl_s=3,
                                   request_timeout_s=5.0, operation_timeout_s=5.0))

    def inst(n):
        return Instance(service=sys.argv[4], instance_id=f"{sys.argv[4]}-{n}",
                        host="127.0.0.1", port=41000 + n)

    server = LoopThread()  # the parent's own server loop, running on
    server.run(reg.register(inst(1)))

    async def blackhole():
        proxy.blackhole()

    proxy_loop.run(blackhole())
    # a register() of the server's loop in flight (etcd slow to answer): it holds the lock
    pending = asyncio.run_coroutine_threadsafe(reg.register(inst(2)), server.loop)
    time.sleep(0.5)
    if not held:  # the control: the same fork once that register() is done
        proxy_loop.run(proxy.start())
        pending.result(10)
    pid = os.fork()
    if pid == 0:
        async def child():
            started = time.monotonic()
            try:
                await asyncio.wait_for(reg.register(inst(3)), 6)
                return "ok"
            except BaseException as exc:
                return f"{type(exc).__name__}: {exc} ({time.monotonic() - started:.1f} s)"
        print("child:", asyncio.run(child()), flush=True)
        os._exit(0)
    proxy_loop.run(proxy.start())  # etcd answers again, to the parent and to the child
    pending.result(10)
    print("parent: ok", flush=True)
    os.waitpid(pid, 0)
    server.run(reg.close())
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("mode", ["held", "control"])
def test_a_registry_used_by_another_thread_at_a_fork_registers_in_the_child(
        node: EtcdCluster, mode: str) -> None:
    """A registry whose lock (``_lease_lock``) another thread's loop of the parent held
    at ``os.fork()`` (a register waiting for etcd's answer: a parent serving from a loop
    thread while it forks workers). The child inherited the lock held by a loop that
    does not exist there (not closed in the child's view, so the dead-holder check never
    passed it on), and every register()/deregister() of the child waited for good: no
    RegistryError, no timeout (register() takes the lock before any request bound
    starts). The class docstring promises a registry used before a fork "works in the
    child too". Now the child gets a lock of its own (``os.register_at_fork``), free.
    ``control``: the same fork once the lock is free. In a subprocess: the test's own
    process has threads a fork would copy (found by a review of b402556)."""
    lines, out = forked(_FORK_WHILE_HELD, str(node.members[0].client_port), mode,
                        unique_service())
    assert lines.get("parent") == "ok", out
    assert lines.get("child") == "ok", (
        f"the forked child's register(): {lines.get('child')!r} (the lease lock stayed "
        f"held by the parent's other loop)")


_FORK_AFTER_REGISTERING = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, sys.argv[1])
    from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
    from tests.support.loops import LoopThread

    service = sys.argv[3]
    # ttl_s=1, etcd's least: the parent's lease ends 1-1.5 s after its last renewal
    reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{sys.argv[2]}",), ttl_s=1,
                                   request_timeout_s=1.0, operation_timeout_s=2.0))

    def inst(n):
        return Instance(service=service, instance_id=f"{service}-{n}", host="127.0.0.1",
                        port=41000 + n)

    server = LoopThread()  # the parent's server loop, keeping its instance alive
    server.run(reg.register(inst(1)))
    pid = os.fork()
    if pid == 0:
        async def child():
            await reg.register(inst(2))  # the worker's own instance
            await asyncio.sleep(3)  # 3 ttl_s: the parent's lease expired unless renewed
            snap = await reg.snapshot(service)
            await reg.deregister(inst(2))
            await reg.close()
            return (f"live={sorted(i.instance_id for i in snap.live)} "
                    f"failing={sorted(i.instance_id for i in snap.failing)}")
        print("child:", asyncio.run(child()), flush=True)
        os._exit(0)
    server.run(reg.close())  # the parent dies (stops renewing) without deregistering
    server.close()
    os.waitpid(pid, 0)
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_keeps_its_own_instances_alive_not_its_parents(
        node: EtcdCluster) -> None:
    """A child forked from a process that registered an instance registers its own (a
    pre-fork server's worker); then the parent dies without deregistering. The child had
    inherited the parent's lease and owned instances: its register put the child's key
    under the parent's lease, and its keep-alive renewed that lease (and its key check
    would put back the parent's keys): the dead parent's instance stayed listed, a
    passing endpoint, for as long as the worker lived. Now a child forgets its parent's
    lease and instances, as the local registry's child forgets its parent's
    registrations (and a Consul registry's child never runs its parent's per-instance
    keep-alives): the parent's instance is failing (its key went with its lease, its
    last-seen record stays), the child's is live under a lease of its own."""
    service = unique_service()
    lines, out = forked(_FORK_AFTER_REGISTERING, str(node.members[0].client_port), service)
    assert lines.get("child") == f"live=['{service}-2'] failing=['{service}-1']", (
        f"the child's view after the parent died: {lines.get('child')!r} {out}")


_WORKERS_JITTER = workers_jitter_script("""
    import random
    from meshkit.discovery import EtcdOptions, EtcdRegistry, Instance
    from tests.support.loops import LoopThread

    service, given = sys.argv[3], sys.argv[4] == "given"
    reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{sys.argv[2]}",), ttl_s=2,
                                   request_timeout_s=2.0, operation_timeout_s=2.0),
                       rng=random.Random(7) if given else None)
    inst = Instance(service=service, instance_id=f"{service}-0", host="127.0.0.1",
                    port=41000)
    master = LoopThread()  # a pre-fork master that registered, then forks its workers
    master.run(reg.register(inst))

    async def leave():
        await reg.deregister(inst)
        await reg.close()
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("rng", ["default", "given"])
def test_workers_forked_from_one_registry_draw_different_backoff_jitter(
        node: EtcdCluster, rng: str) -> None:
    """A registry built with the default ``rng`` (a ``random.Random()`` seeded once, at
    construction) and used by a pre-fork master: every worker forked from it inherited
    the generator's state, so all of them drew the same "random" backoff delays, and
    after an etcd member's restart every worker's keep-alive, watches and write retries
    fired in lock-step: the thundering herd full jitter exists to break up (CPython
    reseeds its own module-level generator in a forked child for this reason,
    ``Lib/random.py``). Now a forked child reseeds a generator the registry made itself
    (``_forget_parent``). ``given``: a generator the caller passed is the caller's and is
    left alone (a test's seeded one draws the same in every worker), which also shows
    the comparison can see equal draws (found by a review of 542f7d1)."""
    lines, out = forked(_WORKERS_JITTER, str(node.members[0].client_port),
                        unique_service(), rng)
    check_workers_jitter(lines, out, rng)


_CONNECTIONS_AFTER_CLOSE = connections_after_close_script("""
    from meshkit.discovery import EtcdOptions, EtcdRegistry

    def registry(port):  # a keep-alive round or two (ttl_s=1: every 1/3 s); the watch a
        # stream (resumed after ttl_s of quiet: not before the fork)
        return EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{port}",), ttl_s=1))
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc/net/tcp")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("mode", ["fork", "control"])
def test_a_masters_connections_end_at_its_close_while_a_forked_worker_lives(
        node: EtcdCluster, mode: str) -> None:
    """A pre-fork master registered and watched, forked a worker (which never touches the
    registry), then closed its registry: its connections to etcd stayed ESTABLISHED for
    as long as the worker lived ("2 of the master's 2"), a watch stream among them, open
    and fed by etcd. The worker's copies of their sockets (the parent's sessions a child
    keeps referenced, never closed) held them open, so the master's close sent no FIN;
    so would every connection the master recycles later (a quiet watch stream resumed,
    an idle one closed by aiohttp), until every worker forked while it was open exited.
    Now the child drops its copies of those descriptors at the fork (``/dev/null``
    ``dup2``-ed over them: see
    :func:`~meshkit.discovery._resolver.drop_inherited_sockets`). ``control``: no fork,
    the connections close (found by a review of 542f7d1)."""
    lines, out = forked(_CONNECTIONS_AFTER_CLOSE, str(node.members[0].client_port), mode,
                        unique_service())
    check_connections_after_close(lines, out, "etcd")


_PARENT_AFTER_FORK = parent_after_fork_script("""
    from meshkit.discovery import EtcdOptions, EtcdRegistry, _etcd

    def registry(port):
        # a quiet watch stream is resumed after ttl_s (20 s): not before the bound the
        # script waits for
        return EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{port}",), ttl_s=20,
                                        request_timeout_s=4.0, operation_timeout_s=4.0))

    def let_go(reg):  # the parent's sessions
        _etcd._inherited.clear()
""")


@pytest.mark.timeout(90)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("worker", ["live", "collect"])
def test_a_forked_worker_leaves_its_masters_watch_and_requests_undisturbed(
        node: EtcdCluster, worker: str) -> None:
    """A pre-fork master watching a service and holding a pooled connection forks a
    worker, then registers two instances: each register() answers (no retry) and the
    master's watch lists each at once. ``live``: the worker lives on meanwhile (its
    copies of the master's socket descriptors were replaced with ``/dev/null`` at the
    fork, which leaves the master's sockets, and their registrations with the epoll
    instance parent and child share, as they were). ``collect``: the worker collects
    the parent's sessions it inherited, as an interpreter's exit may: their connectors
    close their transports through the child's copy of the parent's event loop, whose
    ``epoll_ctl(EPOLL_CTL_DEL)`` on that shared instance removed the master's own
    registrations of those sockets: the master's watch went silent (until its stream is
    resumed after ``ttl_s`` of quiet) and its next request on the pooled connection got
    no answer ("register 1: RegistryError ... TimeoutError"). Now those descriptors name
    ``/dev/null`` in the child by then, so the call fails there, harmlessly."""
    lines, out = forked(_PARENT_AFTER_FORK, str(node.members[0].client_port), worker,
                        unique_service(), timeout_s=80)
    # at once when undisturbed; a silenced stream is resumed only after ttl_s (20 s)
    check_master_undisturbed(lines, out)


# -- a key lost while its lease lives: the owner puts it back ------------------------------------
def _check_bound_s(opts: EtcdOptions) -> float:
    """The documented bound within which an owner puts back a key it lost while its lease
    lives: ``ttl_s + keepalive_interval_s`` (its requests aside)."""
    assert opts.keepalive_interval_s is not None
    return opts.ttl_s + opts.keepalive_interval_s


async def _stored(node: EtcdCluster, key: str) -> dict[str, Any] | None:
    """``key`` on the node as ``{"value": decoded text, "lease": int}``, or None."""
    data = await asyncio.to_thread(node.post, 0, "/kv/range", {"key": _b64(key)})
    kvs: list[dict[str, Any]] = data.get("kvs") or []  # type: ignore[assignment]
    if not kvs:
        return None
    return {"value": base64.b64decode(kvs[0].get("value", "")).decode(),
            "lease": int(kvs[0].get("lease") or 0)}


async def test_a_key_deleted_while_its_lease_lives_is_put_back(
        node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """An instance's key deleted while its lease lives (``etcdctl del``): the owner kept
    renewing the lease and never put the key back, so the healthy instance stayed invisible
    to every watch for as long as the process lived. Now the owner notices within
    ``ttl_s + keepalive_interval_s`` and puts it back under its lease, logged and counted
    in ``status().reopened``; the other instance and the lease are left alone."""
    opts = EtcdOptions(endpoints=tuple(node.endpoints), **FAST)
    owner, reader = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [owner, reader]
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    await owner.register(a)
    await owner.register(b)
    watcher = Collector(reader, service)
    await watcher.until_set({a, b})
    lease = owner._lease
    key = f"/meshkit/services/{service}/{a.instance_id}"
    with capture_logs() as logs:
        await asyncio.to_thread(node.post, 0, "/kv/deleterange", {"key": _b64(key)})
        await watcher.until_set({b})
        await watcher.until_set({a, b}, timeout_s=_check_bound_s(opts) + 3)
    stored = await _stored(node, key)
    assert stored is not None and stored["lease"] == lease == owner._lease
    assert json.loads(stored["value"])["instance_id"] == a.instance_id
    await until(lambda: owner.status().reopened == 1, what="the owner to count the put-back")
    assert [e["key"] for e in logs
            if e["event"] == "etcd key of a registered instance was lost; putting it back"
            ] == [key]
    assert owner.status().writable is True
    await watcher.stop()


async def test_a_key_overwritten_by_another_writer_is_put_back(
        node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """The key of a registered instance overwritten by another writer (another value, no
    lease: it would outlive the owner) is put back with the owner's value under its lease:
    the process that registered an id is its authority, as a Consul agent's anti-entropy
    is over the catalog."""
    opts = EtcdOptions(endpoints=tuple(node.endpoints), **FAST)
    owner, reader = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [owner, reader]
    service = unique_service()
    a = make_instance(service, 1)
    impostor = Instance(service=service, instance_id=a.instance_id, host=a.host,
                        port=a.port + 1)
    await owner.register(a)
    watcher = Collector(reader, service)
    await watcher.until_set({a})
    key = f"/meshkit/services/{service}/{a.instance_id}"
    with capture_logs() as logs:
        await asyncio.to_thread(node.post, 0, "/kv/put", {
            "key": _b64(key), "value": _b64(json.dumps({
                "service": service, "instance_id": a.instance_id, "host": a.host,
                "port": impostor.port}))})  # no lease
        await watcher.until_set({impostor})
        await watcher.until_set({a}, timeout_s=_check_bound_s(opts) + 3)
    stored = await _stored(node, key)
    assert stored is not None and stored["lease"] == owner._lease
    assert [e.get("other_lease") for e in logs
            if e["event"] == "etcd key of a registered instance was lost; putting it back"
            ] == [0]
    await until(lambda: owner.status().reopened == 1, what="the owner to count the put-back")
    await watcher.stop()


async def test_a_deleted_prefix_is_put_back_with_its_last_seen_records(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """``etcdctl del --prefix /meshkit/services`` (no ``/``: the instances' prefix and the
    records' sibling ``/meshkit/services@last-seen/``) deletes the keys and the last-seen
    records: both are put back (the key first), so an owner that dies afterwards is still
    ``failing()``; a deregistered instance is not put back."""
    # a lease of 1 s: the key check (every ttl_s) and the lease's end come sooner
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **{**FAST, "ttl_s": 1})
    owner, reader = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [owner, reader]
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    await owner.register(a)
    await owner.register(b)
    await owner.deregister(b)
    record = f"/meshkit/services@last-seen/{service}/{a.instance_id}"
    assert await _stored(own_node, record) is not None
    watcher = Collector(reader, service)
    await watcher.until_set({a})
    await asyncio.to_thread(own_node.post, 0, "/kv/deleterange", {
        "key": _b64("/meshkit/services"), "range_end": _b64("/meshkit/servicet")})
    assert await _stored(own_node, record) is None
    await watcher.until_set(set())
    await watcher.until_set({a}, timeout_s=_check_bound_s(opts) + 5)
    await until(lambda: _present(own_node, record), timeout_s=5, what="the record put back")
    assert await _stored(own_node, f"/meshkit/services/{service}/{b.instance_id}") is None
    await owner.close()  # dies without deregistering: failing until the record expires
    await until(lambda: _is(reader.failing(service), {a}), timeout_s=4 * opts.ttl_s + 4,
                what="the dead instance failing")
    await watcher.until_set(set())  # gone from the watch with its lease
    await watcher.stop()


async def _present(node: EtcdCluster, key: str) -> bool:
    return await _stored(node, key) is not None


async def _cut_watch(node: EtcdCluster, registries: list[EtcdRegistry],
                     change: Any) -> tuple[list[frozenset[Instance]], list[Any]]:
    """Watch through a proxy, cut it, let ``change(owner, a)`` run against etcd directly,
    heal; return every set the watch yielded and the logs."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    owner = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    registries.append(owner)
    await owner.register(a)
    port = node.members[0].client_port
    async with TcpProxy("127.0.0.1", port) as proxy:
        reader = EtcdRegistry(EtcdOptions(endpoints=(f"127.0.0.1:{proxy.port}",),
                                          **{**FAST, "backoff_base_s": 0.2}))
        registries.append(reader)
        watcher = Collector(reader, service)
        seen = [await watcher.next()]
        assert seen == [{a}]
        with capture_logs() as logs:
            await proxy.stop()
            await until(lambda: reader.status().readable is False, what="watch cut")
            await owner.register(b)
            await owner.deregister(a)
            await change(owner)
            await proxy.start()
            seen.append(await watcher.next())
            await until(lambda: reader.status().readable is True, what="watch back")
        await watcher.stop()
    assert seen[-1] == {b}
    return seen, logs


async def test_watch_catches_up_after_a_disconnect(
        node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """Changes made while a watch was cut off reach it when it reconnects (it reads the
    prefix again, then streams from that read's revision), with no intermediate empty
    set."""
    async def nothing(_owner: EtcdRegistry) -> None:
        return None

    seen, logs = await _cut_watch(node, registries, nothing)
    assert frozenset() not in seen
    assert not [e for e in logs if "compacted" in e["event"]]


async def test_replaced_store_keeps_last_endpoints_until_owners_return(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """etcd restarted on a wiped data directory: the watch keeps its last set (never yields
    an empty one) while the owner finds its lease gone and registers again, then the store's
    view applies."""
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **{**FAST, "ttl_s": 3})
    owner, reader = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [owner, reader]
    service = unique_service()
    a = make_instance(service, 1)
    await owner.register(a)
    for i in range(20):  # move the old store's revision well past a fresh one's
        await asyncio.to_thread(own_node.post, 0, "/kv/put", {"key": _b64(f"pad{i}"), "value": ""})
    watcher = Collector(reader, service)
    await watcher.until_set({a})
    own_node.kill(0)
    own_node.wipe(0)
    own_node.start_member(0)
    await own_node.wait_healthy()
    await until(lambda: reader.status().kept_endpoints == 1, timeout_s=10,
                what="the watch to keep the last set")
    await until(lambda: owner.status().reopened == 1, timeout_s=10, what="re-registration")
    await until(lambda: reader.status().kept_endpoints == 0, timeout_s=2 * opts.ttl_s + 2,
                what="the grace period to end")
    assert watcher.latest == {a}
    while not watcher.queue.empty():
        assert watcher.queue.get_nowait() == {a}
    await watcher.stop()


async def test_a_wiped_store_whose_revision_passed_the_watch_is_read_again(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """etcd restarted on a wiped data directory with its usual flags (so the *same*
    cluster id) while a watch was cut off, and by the time the watch reconnected the new
    store's revision was past the watch's (other tenants' writes, re-registrations). The
    watch took the new store for the old one and resumed its stream from its old
    revision: the instance registered in the new store below that revision was never
    listed and the dead one of the old store never left. A watch now reads the prefix
    again after any broken stream (and tells a replaced store by a key whose
    ``mod_revision`` is at most the watch's revision but not the one it knew): the dead
    instance is kept for ``fault_grace_s``, then the new store's view applies."""
    service = unique_service()
    a, c = make_instance(service, 1), make_instance(service, 3)
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **FAST)
    dead_owner = EtcdRegistry(opts)
    await dead_owner.register(a)
    await dead_owner.close()  # its process dies during the outage: never registers again
    async with TcpProxy("127.0.0.1", own_node.members[0].client_port) as proxy:
        # the reader's fault_grace_s (its ttl_s) of 1 s: the dead instance goes sooner
        reader = EtcdRegistry(EtcdOptions(endpoints=(f"127.0.0.1:{proxy.port}",),
                                          **{**FAST, "ttl_s": 1}))
        new_owner = EtcdRegistry(opts)
        registries += [reader, new_owner]
        watcher = Collector(reader, service)
        assert await watcher.next() == {a}
        await proxy.stop()
        await until(lambda: reader.status().readable is False, what="watch cut")
        own_node.kill(0)
        own_node.wipe(0)
        own_node.start_member(0)
        await own_node.wait_healthy()
        await new_owner.register(c)  # a live instance, in the new store
        for i in range(20):  # other tenants' writes move the new store on
            await asyncio.to_thread(own_node.post, 0, "/kv/put",
                                    {"key": _b64(f"/other/{i}"), "value": ""})
        await proxy.start()
        await until(lambda: reader.status().readable is True, timeout_s=5,
                    what="watch back")
        assert await watcher.next() == {a, c}  # a kept for fault_grace_s
        await watcher.until_set({c}, timeout_s=opts.ttl_s + 4)
        await watcher.stop()


async def test_tls_with_client_certificates(binary: str, tmp_path: Path) -> None:
    """etcd+https:// with a CA and a client certificate registers and watches on an etcd
    that requires client certificates; without one, registering fails."""
    pki = tmp_path / "pki"
    ca = init_ca_dir(pki, trust_domain="meshkit.test", ttl_days=1)
    server = issue_into_dir(pki, "etcd", ttl_h=1, dns=("localhost",), ips=("127.0.0.1",))
    client = issue_into_dir(pki, "client", ttl_h=1, dns=("localhost",))
    cluster = EtcdCluster(binary, tmp_path, size=1, tls=EtcdTls(
        cert_file=Path(server.cert_file), key_file=Path(server.key_file),
        client_ca_file=Path(ca.ca_file)))
    try:
        await cluster.start()
        uri = cluster.uri(ca_file=ca.ca_file, cert_file=client.cert_file,
                          key_file=client.key_file, ttl_s=2)
        reg = registry_from_uri(uri)
        assert isinstance(reg, EtcdRegistry)
        no_cert = EtcdRegistry(EtcdOptions(endpoints=tuple(cluster.endpoints),
                                           ca_file=str(ca.ca_file), **FAST))
        try:
            service = unique_service()
            a = make_instance(service, 1)
            await reg.register(a)
            assert await Collector(reg, service).next() == {a}
            with pytest.raises(RegistryError):
                await no_cert.register(a)
        finally:
            await reg.close()
            await no_cert.close()
    finally:
        cluster.close()


async def test_reads_of_a_silent_member_say_what_failed(node: EtcdCluster) -> None:
    """``failing()`` and ``services()`` against a member that does not answer (a
    partition; a proxy that stops forwarding) raised RegistryError with ``str()`` of a
    bare TimeoutError, i.e. nothing after the colon (``meshkit prometheus-targets``
    printed "etcd: cannot read the failing instances of 'echo': "); they name the error
    as register() does (``TimeoutError: ...``)."""
    async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
        # each read times out (what it says is the test): after 0.3 s, not 1 s
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{proxy.port}",),
                                       ttl_s=2, request_timeout_s=0.3,
                                       operation_timeout_s=0.3))
        try:
            proxy.blackhole()
            messages = []
            async with asyncio.timeout(20):
                for read in (lambda: reg.failing("echo"), reg.services):
                    with pytest.raises(RegistryError) as info:
                        await read()
                    messages.append(str(info.value))
            assert all("TimeoutError" in m and not m.rstrip().endswith(":")
                       for m in messages), messages
        finally:
            await reg.close()


async def test_a_register_in_flight_when_the_registry_closes_raises_registry_error(
        node: EtcdCluster) -> None:
    """``close()`` while a ``register()`` waited on a member that did not answer: the
    register escaped with a bare ``RuntimeError('Session is closed')`` from aiohttp (its
    retry used the closed session) instead of the documented :class:`RegistryError`,
    which a server's start or a drain racing a shutdown handles. It now raises
    RegistryError ("... is closed", chained from the request's error)."""
    async with TcpProxy("127.0.0.1", node.members[0].client_port) as proxy:
        reg = EtcdRegistry(EtcdOptions(endpoints=(f"127.0.0.1:{proxy.port}",), ttl_s=10,
                                       request_timeout_s=3.0, operation_timeout_s=6.0))
        service = unique_service()
        try:
            await reg.register(make_instance(service, 1))
            proxy.blackhole()
            pending = asyncio.create_task(reg.register(make_instance(service, 2)))
            await asyncio.sleep(0.5)  # the put is on the wire, unanswered
            await reg.close()
            async with asyncio.timeout(8):
                with pytest.raises(RegistryError, match="is closed"):
                    await pending
        finally:
            await proxy.start()
            await reg.close()


class _Unretrieved(logging.Handler):
    """Collects asyncio's ERROR records "Task exception was never retrieved"."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "never retrieved" in text:
            ctx = getattr(record, "exc_info", None)
            self.lines.append(f"{text}: {ctx[1]!r}" if ctx else text)


@asyncio_loop_only("it reads the loop's ready queue (loop._ready)")
@pytest.mark.timeout(60)
def test_a_register_answered_as_another_threads_close_runs_raises_and_starts_no_keeper(
        node: EtcdCluster) -> None:
    """One registry shared by the loops of two threads (documented: close() "ends the
    watches, keep-alives and sessions of every loop still running"). Thread B's
    register() waits for etcd's answer to its put; thread A calls close(); the answer
    reaches B's loop after close() took and cancelled the keep-alives (B's loop busy
    meanwhile: a blocking callback, a loaded box). register() returned normally though
    close() had run, and started a keep-alive in B's loop that nothing cancelled: at its
    first round the closed registry raised RegistryError ("... is closed"), which the
    keep-alive did not catch, so it died with it and asyncio logged "ERROR Task exception
    was never retrieved" once it was collected. Now register() raises RegistryError
    (its docstring: "or the registry was closed meanwhile") and starts no keep-alive, as
    the Consul registry does (test_consul.py::
    test_register_finishing_during_close_starts_no_keeper). ``last_seen_ttl_s=0``: with
    last-seen records the record's put after the key raised the RegistryError already
    (found by a review of b402556)."""
    handler = _Unretrieved()
    logging.getLogger("asyncio").addHandler(handler)
    try:
        outcome, keepers_left = _register_answered_as_another_thread_closes(node)
        for _ in range(3):  # the registry is gone: its tasks are collected
            gc.collect()
        got = (outcome.split(":")[0], keepers_left, handler.lines)
        assert got == ("RegistryError", [], []), (
            f"register() after close(): {outcome}; keep-alive left: {keepers_left}; "
            f"asyncio: {handler.lines}")
    finally:
        logging.getLogger("asyncio").removeHandler(handler)


def _asked_to_close(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` (blocked in a callback) has close()'s request to close its HTTP
    session waiting (white box: ``_resolver._cancel_and_tell`` in its ready queue)."""
    from meshkit.discovery._resolver import _cancel_and_tell
    try:
        ready = list(loop._ready)  # type: ignore[attr-defined]
    except RuntimeError:  # appended to meanwhile
        return False
    return any(getattr(h, "_callback", None) is _cancel_and_tell for h in ready)


def _register_answered_as_another_thread_closes(node: EtcdCluster) -> tuple[str, list[str]]:
    """Thread B registers ``service-1``, then ``service-2`` whose put's answer etcd sends
    (through a proxy that held the request) while B's loop is busy and the main thread
    closes the registry from a loop of its own. Returns register()'s outcome and the
    keep-alive tasks of B's loop (and in ``_keepers``) one keep-alive interval later."""
    interval = 0.5
    proxy_loop = LoopThread()

    async def start_proxy() -> TcpProxy:
        proxy = TcpProxy("127.0.0.1", node.members[0].client_port)
        await proxy.start()
        return proxy

    proxy = proxy_loop.run(start_proxy())
    reg = EtcdRegistry(EtcdOptions(
        endpoints=(f"http://127.0.0.1:{proxy.port}",),
        **{**FAST, "request_timeout_s": 5.0, "operation_timeout_s": 5.0,
           "keepalive_interval_s": interval, "last_seen_ttl_s": 0}))
    service = unique_service()
    b = LoopThread()
    blocked = threading.Event()
    go = threading.Event()
    try:
        b.run(reg.register(make_instance(service, 1)))

        async def blackhole() -> None:
            proxy.blackhole()  # the next request is held at the proxy

        proxy_loop.run(blackhole())

        async def start_register() -> asyncio.Task[None]:
            task = asyncio.create_task(reg.register(make_instance(service, 2)))
            await asyncio.sleep(0.3)  # its put is on the wire, held
            return task

        registering = b.run(start_register())

        def busy() -> None:
            blocked.set()
            go.wait(10)

        b.loop.call_soon_threadsafe(busy)
        assert blocked.wait(10)
        proxy_loop.run(proxy.start())  # etcd answers; the answer waits in B's socket
        time.sleep(0.3)
        closed: list[BaseException | None] = []

        def close_in_a() -> None:  # thread A
            try:
                run_loop(asyncio.wait_for(reg.close(), 8))
            except BaseException as exc:  # asserted below
                closed.append(exc)
            else:
                closed.append(None)

        a = threading.Thread(target=close_in_a)
        a.start()
        # B stays busy until close() took the keep-alives and the sessions and asked B's
        # loop to close its own: from then on close() only waits (request_timeout_s, 5 s)
        # for the busy loop to do so, which is what it would find on returning anyway
        give_up = time.monotonic() + 8
        while a.is_alive() and not _asked_to_close(b.loop) and time.monotonic() < give_up:
            time.sleep(0.01)
        go.set()
        a.join(10)
        assert closed == [None], f"close() from thread A: {closed}"

        async def result() -> str:
            try:
                await asyncio.wait_for(asyncio.shield(registering), 8)
            except RegistryError as exc:
                return f"RegistryError: {exc}"
            except BaseException as exc:
                return repr(exc)
            return "returned"

        outcome = b.run(result())

        async def keepalives_after_a_round() -> list[str]:
            await asyncio.sleep(interval * 2)
            return [repr(t) for t in asyncio.all_tasks()
                    if t.get_name() == "meshkit-etcd-keepalive"] + [
                repr(t) for t in reg._keepers.values()]

        return outcome, b.run(keepalives_after_a_round())
    finally:
        go.set()
        b.close()
        proxy_loop.run(proxy.close())
        proxy_loop.close()


async def test_a_keep_alive_round_that_finds_the_registry_closed_ends_quietly(
        node: EtcdCluster) -> None:
    """A keep-alive whose cancel from close() has not landed yet (another thread's loop,
    cancelled from close()'s thread) and whose round comes first finds the registry
    closed: its request raised RegistryError ("... is closed"), which the keep-alive did
    not catch (only etcd's errors), so the task died with it (asyncio: "ERROR Task
    exception was never retrieved"). It now ends quietly, as the Consul registry's
    keep-alive does. The round is run here after close() (white-box: the keep-alive
    coroutine itself)."""
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    await reg.register(make_instance(unique_service(), 1))
    await reg.close()
    async with asyncio.timeout(8):  # the first round is one keep-alive interval away
        assert await reg._keep() is None


@pytest.mark.parametrize("op", ["register", "deregister", "services", "snapshot"])
async def test_a_call_racing_close_during_a_members_name_lookup_raises_registry_error(
        node: EtcdCluster, slow_dns: SlowDns, op: str) -> None:
    """close() while a call waits for a member's name lookup (a slow DNS server): close()
    closes the session, its aiohttp connector cancels the lookup's task
    (``TCPConnector._close`` cancels ``_resolve_host_tasks``) and the call raised a bare
    CancelledError out of a task nobody cancelled (``cancelling() == 0``), which a
    caller's gather() or TaskGroup takes for a cancellation of its own, where each of
    them documents RegistryError (register and deregister: "or the registry was closed
    meanwhile"). Now RegistryError ("... is closed")."""
    reg = EtcdRegistry(EtcdOptions(
        endpoints=(f"http://slow-dns.test:{node.members[0].client_port}",),
        **{**FAST, "request_timeout_s": 5.0, "operation_timeout_s": 6.0}))
    instance = make_instance(unique_service(), 1)
    call = {"register": lambda: reg.register(instance),
            "deregister": lambda: reg.deregister(instance),
            "services": reg.services,
            "snapshot": lambda: reg.snapshot(instance.service)}[op]

    async def outcome() -> str:
        try:
            await call()
            return "done"
        except RegistryError as exc:
            return f"RegistryError: {exc}"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            return f"CancelledError (task cancelling()={task.cancelling()})"

    try:
        task = asyncio.create_task(outcome())
        await until(slow_dns.asked.is_set, what="the call to wait for the lookup")
        await reg.close()
        got = await asyncio.wait_for(task, 10)
    finally:
        slow_dns.set()
        await reg.close()
    assert got.startswith("RegistryError: ") and "is closed" in got, got


async def test_a_cancel_during_a_members_name_lookup_still_cancels(
        node: EtcdCluster, slow_dns: SlowDns) -> None:
    """The caller's own cancel of a register() waiting for a member's name lookup is no
    closed registry: it propagates (the task ends cancelled), also when close() follows
    at once."""
    for then_close in (False, True):
        reg = EtcdRegistry(EtcdOptions(
            endpoints=(f"http://slow-dns.test:{node.members[0].client_port}",),
            **{**FAST, "request_timeout_s": 5.0, "operation_timeout_s": 6.0}))
        slow_dns.asked.clear()
        try:
            task = asyncio.create_task(reg.register(make_instance(unique_service(), 1)))
            await until(slow_dns.asked.is_set, what="register() to wait for the lookup")
            task.cancel()
            if then_close:
                await reg.close()
            done, _ = await asyncio.wait((task,), timeout=10)
            assert done and task.cancelled(), (then_close, task)
        finally:
            await reg.close()
    slow_dns.set()


async def test_a_watch_leaves_a_member_gone_silent(node: EtcdCluster) -> None:
    """The member a watch streams from goes silent without closing the connection (a
    partition, a frozen process or VM; here a proxy that stops forwarding): the stream had
    no idle check, so the watch waited on it for good and never saw another change though
    another endpoint was listed. A stream quiet for ``ttl_s`` is now ended and resumed
    with a new request, which fails over to the next member when this one does not
    answer."""
    direct = node.endpoints[0]
    port = node.members[0].client_port
    async with TcpProxy("127.0.0.1", port) as proxy:
        owner = EtcdRegistry(EtcdOptions(endpoints=(direct,), **FAST))
        # the reader's ttl_s of 1 s: its stream is left after 1 s of quiet
        reader = EtcdRegistry(EtcdOptions(
            endpoints=(f"http://127.0.0.1:{proxy.port}", direct), **{**FAST, "ttl_s": 1}))
        try:
            service = unique_service()  # the node is shared with the module's other tests
            a, b = make_instance(service, 1), make_instance(service, 2)
            await owner.register(a)
            watcher = Collector(reader, service)
            assert await watcher.next() == {a}
            await asyncio.sleep(0.3)  # the stream is established through the proxy
            proxy.blackhole()
            await owner.register(b)
            await watcher.until_set({a, b}, timeout_s=12.0)
            await watcher.stop()
        finally:
            await proxy.stop()  # nothing held back: the registries close at once
            await owner.close()
            await reader.close()


class _FrozenLink:
    """One connection of :class:`_FreezingProxy`: its first client bytes, and whether it
    flows (the event set) or is frozen."""

    def __init__(self) -> None:
        self.first = b""
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: list[asyncio.StreamWriter] = []


class _FreezingProxy:
    """A loopback TCP proxy whose connections can be frozen one by one: a frozen
    connection stays open but moves no byte either way, nor a close (a NAT/conntrack
    entry or a load balancer's idle timer dropped it silently), while new connections
    flow normally (:meth:`TcpProxy.blackhole` stops every connection, old and new).
    While :meth:`hold` is in force, a new connection is held (not connected upstream)
    until :meth:`release`; ``held`` counts them."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._server: asyncio.Server | None = None
        self.links: list[_FrozenLink] = []
        self.held = 0
        self._admit = asyncio.Event()
        self._admit.set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> _FreezingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.links:
            for writer in link.writers:
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self, marker: bytes) -> int:
        """Freeze every flowing connection whose first request contains ``marker``; how
        many."""
        frozen = [link for link in self.links
                  if marker in link.first and link.flowing.is_set()]
        for link in frozen:
            link.flowing.clear()
        return len(frozen)

    def hold(self) -> None:
        """Hold every new connection until :meth:`release`."""
        self._admit.clear()

    def release(self) -> None:
        """Let the held connections, and new ones, through."""
        self._admit.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        link = _FrozenLink()
        self.links.append(link)
        link.writers = [writer]
        if not self._admit.is_set():
            self.held += 1
            await self._admit.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        link.writers.append(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       outbound: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if outbound and len(link.first) < 4096:
                        link.first += data
                    await link.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            if link.flowing.is_set():  # a frozen connection passes no close on either
                with contextlib.suppress(OSError):
                    dst.close()

        tasks = [asyncio.create_task(pump(reader, up_writer, True)),
                 asyncio.create_task(pump(up_reader, writer, False))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_watch_leaves_its_own_connection_dropped_silently(node: EtcdCluster) -> None:
    """The watch stream's own TCP connection was dropped silently (a NAT/conntrack entry
    or a load balancer's idle timeout) while the member stayed healthy and new connections
    worked. The quiet-stream check probed the member over *another* pooled connection
    (``/maintenance/status``), which answered, so the dead stream was kept for good: a
    new instance was never listed (still missing after 6 s with ``ttl_s=1``) while
    ``status()`` said readable. A stream quiet for ``ttl_s`` is now ended and resumed from
    its revision on a new connection, so the change arrives within about ``ttl_s``."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    owner = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    async with _FreezingProxy(node.members[0].client_port) as proxy:
        reader = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{proxy.port}",),
                                          **{**FAST, "ttl_s": 1}))
        try:
            await owner.register(a)
            watcher = Collector(reader, service)
            assert await watcher.next() == {a}
            await until(lambda: any(b"/watch" in link.first for link in proxy.links),
                        what="the watch stream through the proxy")
            await asyncio.sleep(0.3)
            assert proxy.freeze(b"/watch") == 1
            await owner.register(b)
            # the reader's ttl_s = 1: a quiet stream is left after 1 s; allow 5 rounds
            await watcher.until_set({a, b}, timeout_s=6.0)
            assert reader.status().readable is True
            await watcher.stop()
        finally:
            await owner.close()
            await reader.close()


async def test_a_quiet_resume_onto_a_wiped_store_whose_revision_passed_is_told(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """A watch stream quiet for ``ttl_s`` was resumed from its revision without a read (only
    a *broken* stream read the prefix again). A quiet stream is exactly the one whose
    connection may have died without a sign; meanwhile etcd was restarted on a wiped data
    directory with its usual flags (same cluster id) and the new store's revision passed
    the watch's, so the resumed stream was taken for the old store's: the live instance
    registered in the new store was never listed and the dead one of the old store stayed
    listed for good. A quiet resume now first reads the prefix's keys (keys only) and,
    as here, when they are not those the watch knew reads the prefix in full: the new
    instance is listed (the dead one kept for ``fault_grace_s``, then dropped)."""
    service = unique_service()
    a, c = make_instance(service, 1), make_instance(service, 3)
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **FAST)
    dead_owner, new_owner = EtcdRegistry(opts), EtcdRegistry(opts)
    registries.append(new_owner)
    for i in range(10):  # the old store's revision: about 12 at the watch's read
        await asyncio.to_thread(own_node.post, 0, "/kv/put", {"key": _b64(f"/o/{i}"), "value": ""})
    await dead_owner.register(a)
    await dead_owner.close()  # dies with the old store: never registers again
    async with _FreezingProxy(own_node.members[0].client_port) as proxy:
        # request_timeout_s long enough for a held request to wait for the release; the
        # reader's ttl_s of 1 s (its quiet-stream bound and fault_grace_s) makes the quiet
        # resume and the grace come sooner
        reader = EtcdRegistry(EtcdOptions(endpoints=(f"http://127.0.0.1:{proxy.port}",),
                                          **{**FAST, "ttl_s": 1, "request_timeout_s": 20.0}))
        registries.append(reader)
        watcher = Collector(reader, service)
        try:
            assert await watcher.next() == {a}
            await until(lambda: any(b"/watch" in link.first for link in proxy.links),
                        what="the watch stream through the proxy")
            await asyncio.sleep(0.2)
            assert proxy.freeze(b"") >= 1  # its connection dies without a sign
            proxy.hold()  # the quiet resume reaches etcd only once its revision passed
            own_node.kill(0)
            own_node.wipe(0)
            own_node.start_member(0)
            await own_node.wait_healthy()
            await new_owner.register(c)  # a live instance of the new store (revision ~2)
            for i in range(30):  # the new store's revision passes the watch's
                await asyncio.to_thread(own_node.post, 0, "/kv/put",
                                        {"key": _b64(f"/other/{i}"), "value": ""})
            # the quiet stream is left after ttl_s; its resume waits here
            await until(lambda: proxy.held >= 1, timeout_s=8, what="the quiet resume")
            proxy.release()
            assert await watcher.next(timeout_s=5) == {a, c}  # a kept for fault_grace_s
            await watcher.until_set({c}, timeout_s=opts.ttl_s + 4)
        finally:
            await watcher.stop()


# -- failing(): instances whose owner died without deregistering -------------------------------
async def test_an_instance_whose_owner_died_is_failing_and_a_drained_one_is_not(
        node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """An etcd key lives under its owner's lease, so an instance whose process died
    without deregistering left with the lease (``ttl_s``) and ``failing()`` was always
    empty: ``meshkit services`` never showed it and ``meshkit prometheus-targets`` dropped
    its target as the lease expired, so ``up == 0`` never lasted the 1m
    ``MeshkitInstanceDown`` needs. With the local registry's semantics, an instance whose
    owner died (its registry closed without deregistering, as SIGKILL leaves it) is
    listed by ``failing()`` once its key is gone, and its service by ``services()``; a
    deregistered one is neither; a watch lists neither (the last-seen records are under
    their own key prefix)."""
    opts = EtcdOptions(endpoints=tuple(node.endpoints), **FAST)
    # the dying owner's lease of 1 s: its key goes a second sooner after it dies
    alive, dying = EtcdRegistry(opts), EtcdRegistry(
        EtcdOptions(endpoints=tuple(node.endpoints), **{**FAST, "ttl_s": 1}))
    registries += [alive, dying]
    orders, users = unique_service(), unique_service()
    stays, dies, drained = make_instance(orders, 1), make_instance(orders, 2), \
        make_instance(users, 1)
    watcher = Collector(alive, orders)
    await alive.register(stays)
    await dying.register(dies)
    await alive.register(drained)
    await watcher.until_set({stays, dies})
    assert await alive.failing(orders) == frozenset()
    await alive.deregister(drained)
    assert users not in await alive.services()
    await dying.close()  # no deregistration: the key goes with the lease
    await watcher.until_set({stays}, timeout_s=4 * opts.ttl_s)

    async def failing_ids() -> set[str]:
        return {i.instance_id for i in await alive.failing(orders)}

    await until(lambda: _is(failing_ids(), {dies.instance_id}), timeout_s=10,
                what="the dead instance reported failing")
    assert await alive.failing(orders) == {dies}  # as it was registered
    assert await alive.failing(users) == frozenset()  # drained: gone, not failing
    assert {orders} <= await alive.services() and users not in await alive.services()
    assert watcher.latest == {stays} and watcher.queue.empty()  # no record in the watch
    await watcher.stop()


async def _is(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def test_a_failing_instance_is_listed_until_its_last_seen_record_expires(
        node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """The last-seen record of a dead instance lives ``last_seen_ttl_s`` after its owner's
    last renewal (default ``max(10 * ttl_s, 300)``), then it is no longer failing and its
    service (with no other instance) no longer listed; a registry whose only instance was
    deregistered holds no last-seen lease (revoked with the instances' lease)."""
    # a lease of 1 s and a record of 3 s: failing from 1-1.5 s to 3-3.5 s, as long a
    # spell as with the lease of 2 s and the record of 4 s before, reached sooner
    opts = EtcdOptions(endpoints=tuple(node.endpoints), last_seen_ttl_s=3,
                       **{**FAST, "ttl_s": 1})
    assert EtcdOptions(ttl_s=10).last_seen_ttl_s == 300
    assert EtcdOptions(ttl_s=60).last_seen_ttl_s == 600
    reader, dying, drained = EtcdRegistry(opts), EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [reader, dying, drained]
    service = unique_service()
    dies, leaves = make_instance(service, 1), make_instance(service, 2)
    await dying.register(dies)
    await drained.register(leaves)
    await drained.deregister(leaves)
    assert drained._lease is None and drained._seen_lease is None
    await dying.close()
    await until(lambda: _is(reader.failing(service), {dies}), timeout_s=10,
                what="the dead instance failing")
    assert service in await reader.services()
    await until(lambda: _is(reader.failing(service), frozenset()), timeout_s=15,
                what="the last-seen record expired")
    assert service not in await reader.services()


async def test_last_seen_records_can_be_turned_off(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """``last_seen_ttl_s=0``: no last-seen lease or record is written, and an instance
    whose owner died leaves with its lease, as before."""
    # a lease of 1 s: the dead instance leaves sooner
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), last_seen_ttl_s=0,
                       **{**FAST, "ttl_s": 1})
    reader, dying = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [reader, dying]
    service = unique_service()
    await dying.register(make_instance(service, 1))
    assert dying._seen_lease is None
    await dying.close()
    await until(lambda: _is(reader.services(), frozenset()), timeout_s=10,
                what="the instance gone with its lease")
    assert await reader.failing(service) == frozenset()


def test_last_seen_ttl_is_checked() -> None:
    """``last_seen_ttl_s`` is whole seconds, 0 (off) or at least ``ttl_s``, at most etcd's
    longest lease; the message quotes the value."""
    for bad in (1.5, 5, -1, 9_000_000_001):
        with pytest.raises(ConfigError, match="last_seen_ttl_s"):
            EtcdOptions(ttl_s=10, last_seen_ttl_s=bad)
    assert EtcdOptions.from_uri("etcd://h:2379?last_seen_ttl_s=60").last_seen_ttl_s == 60


# -- rolling upgrades: readers of another meshkit version share the prefix ---------------------
async def _old_reader_view(node: EtcdCluster, prefix: str) -> dict[str, set[str]]:
    """What a meshkit before the last-seen records (a3d59d4 and earlier) reads of
    ``prefix``: its ``services()`` takes the first path segment of every key in the range
    ``[prefix, prefix_end)`` as a service, and ``meshkit services``/``prometheus-targets``
    then read each service's range ``<prefix><service>/`` as its instances. Returned as
    ``{service: {key read as an instance}}``."""
    raw = prefix.encode()
    data = await asyncio.to_thread(node.post, 0, "/kv/range", {
        "key": _b64(prefix), "range_end": _b64(raw[:-1].decode() + chr(raw[-1] + 1)),
        "keys_only": True})
    kvs: list[dict[str, Any]] = data.get("kvs") or []  # type: ignore[assignment]
    view: dict[str, set[str]] = {}
    for kv in kvs:
        rest = base64.b64decode(kv["key"]).decode()[len(prefix):]
        service, sep, _ = rest.partition("/")
        if sep and service:
            view.setdefault(service, set()).add(base64.b64decode(kv["key"]).decode())
    return view


async def test_an_older_reader_of_the_prefix_sees_each_instance_once(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """During a rolling upgrade older meshkits read the prefix this registry writes. Their
    ``services()`` takes the first path segment of every key under ``prefix`` as a service:
    with the last-seen records at ``<prefix>@last-seen/<service>/<id>`` they listed a
    service ``@last-seen``, ``meshkit services --json`` showed each new instance twice
    (once under ``@last-seen``) and ``meshkit prometheus-targets`` kept a dead new
    instance a passing target for ``last_seen_ttl_s`` (300 s). The records now lie outside
    the prefix's range, under the sibling prefix ``<prefix without its '/'>@last-seen/``,
    and the new reader still lists a dead instance failing from there."""
    # a lease of 1 s: the dead instance is failing sooner
    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **{**FAST, "ttl_s": 1})
    owner, reader = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [owner, reader]
    service = unique_service()
    a = make_instance(service, 1)
    await owner.register(a)
    assert owner._seen_lease is not None and not owner._unseen  # the record is written
    assert await _old_reader_view(own_node, opts.prefix) == {
        service: {f"/meshkit/services/{service}/{a.instance_id}"}}
    assert await _stored(own_node, f"/meshkit/services@last-seen/{service}/{a.instance_id}")
    await owner.close()  # dies: the new reader lists it failing, the old one not at all
    await until(lambda: _is(reader.failing(service), {a}), timeout_s=4 * opts.ttl_s + 4,
                what="the dead instance failing")
    assert await reader.services() == {service}
    assert await _old_reader_view(own_node, opts.prefix) == {}


@pytest.mark.parametrize("prefix", ["/meshkit/services/", "/", "/prod/", "/a/b/",
                                    "/x-y_z.0/", "/\u00e9t\u00e9/", "/~/"])
def test_last_seen_records_sort_outside_the_prefix_range(prefix: str) -> None:
    """The records' range ``[<prefix minus '/'>@last-seen/, its end)`` and the instances'
    ``[prefix, prefix_end)`` are disjoint in etcd's byte order for any prefix EtcdOptions
    takes (it must end with ``/``, and ``@`` sorts after ``0``, the prefix range's end
    byte), so no reader of the prefix, of any version, meets a record."""
    from meshkit.discovery._etcd import _prefix_end, _seen_prefix

    p = EtcdOptions(prefix=prefix).prefix.encode()
    s = _seen_prefix(prefix).encode()
    assert s == prefix[:-1].encode() + b"@last-seen/"
    assert _prefix_end(p) <= s or _prefix_end(s) <= p
    with pytest.raises(ConfigError, match="end with '/'"):
        EtcdOptions(prefix=prefix.rstrip("/") or "/x")


async def test_last_seen_records_of_the_previous_layout_are_read_during_a_transition(
        own_node: EtcdCluster, registries: list[EtcdRegistry]) -> None:
    """A process of an earlier build (records at ``<prefix>@last-seen/<service>/<id>``)
    that died leaves its record there for up to ``last_seen_ttl_s``: the new reader lists
    that instance failing and its service (never ``@last-seen`` as a service), and a new
    process that registers and drains the same id deletes that record too (a drained
    instance is never failing)."""
    from meshkit.discovery._etcd import _encode

    opts = EtcdOptions(endpoints=tuple(own_node.endpoints), **FAST)
    reader, heir = EtcdRegistry(opts), EtcdRegistry(opts)
    registries += [reader, heir]
    service = unique_service()
    dead = make_instance(service, 1)
    lease = await asyncio.to_thread(own_node.post, 0, "/lease/grant", {"TTL": "60"})
    old_record = f"/meshkit/services/@last-seen/{service}/{dead.instance_id}"
    await asyncio.to_thread(own_node.post, 0, "/kv/put", {
        "key": _b64(old_record), "value": _b64(_encode(dead)), "lease": lease["ID"]})
    assert await reader.failing(service) == {dead}
    assert await reader.services() == {service}
    await heir.register(dead)  # the same id, now a new process's: listed, not failing
    assert await reader.failing(service) == frozenset()
    await heir.deregister(dead)
    assert await _stored(own_node, old_record) is None
    assert await reader.failing(service) == frozenset()
    assert await reader.services() == frozenset()


@pytest.mark.timeout(120)
async def test_prometheus_targets_keep_a_killed_instance_and_drop_a_drained_one(
        tmp_path: Path) -> None:
    """An operator runs the mesh on etcd and Prometheus on ``meshkit prometheus-targets
    --watch`` (deploy/prometheus). The README promises that an instance that died without
    deregistering stays a target (while the registry reports it failing, and
    ``--keep-failing-s``, 300 s, after), so ``up == 0`` shows it and
    ``MeshkitInstanceDown`` (``for: 1m``) fires. On etcd the dead instance's key went with
    its lease (``ttl_s``, 1 s here) and ``failing()`` was always empty, so the writer
    dropped the target as soon as the lease expired: the alert could never fire on etcd.
    A SIGKILLed instance must stay a target well after its lease expired (as on the local
    and Consul registries), while a drained one (SIGTERM: deregistered) leaves."""
    from tests.support.procs import children

    cluster = EtcdCluster(require_etcd_binary(), tmp_path / "etcd", size=1)
    await cluster.start()
    uri = cluster.uri(ttl_s=1)
    targets = tmp_path / "targets.json"
    try:
        async with children(tmp_path / "logs") as kids:
            killed = await kids.start("tests.support.echo", "--service", "echo",
                                      "--registry", uri, "--instance-id", "e1")
            drained = await kids.start("tests.support.echo", "--service", "echo",
                                       "--registry", uri, "--instance-id", "e2",
                                       "--drain-delay-s", "0")
            await killed.wait_line("READY", timeout_s=30)
            await drained.wait_line("READY", timeout_s=30)
            writer = await kids.start("meshkit.cli", "prometheus-targets", "--registry", uri,
                                      "--out", str(targets), "--watch", "--interval-s", "0.2")

            def listed() -> list[str]:
                try:
                    groups = json.loads(targets.read_text())
                except (OSError, ValueError):
                    return []
                return sorted(g["labels"]["mesh_instance"] for g in groups)

            await until(lambda: listed() == ["e1", "e2"], timeout_s=30, interval_s=0.1,
                        what="e1 and e2 targets")
            await killed.kill()  # SIGKILL: no deregistration
            drained.proc.terminate()  # SIGTERM: drains, deregisters
            assert await drained.wait_exit(timeout_s=20) == 0, drained.stderr()
            await until(lambda: listed() == ["e1"], timeout_s=10, interval_s=0.1,
                        what="the drained instance gone from the targets")

            def live_keys() -> int:
                key = base64.b64encode(b"/meshkit/services/echo/").decode()
                end = base64.b64encode(b"/meshkit/services/echo0").decode()
                answer = cluster.post(0, "/kv/range", {"key": key, "range_end": end,
                                                       "count_only": True})
                return int(str(answer.get("count") or 0))

            async def lease_gone() -> bool:
                return await asyncio.to_thread(live_keys) == 0

            await until(lease_gone, timeout_s=30, interval_s=0.2,
                        what="the killed instance's lease expired")
            # many --interval-s (0.2 s) passes of the writer past the lease: each reads the
            # registry afresh, so the first pass after the key went would drop the target
            await asyncio.sleep(1.5)
            assert writer.proc.returncode is None, writer.stderr()
            assert listed() == ["e1"], (
                "the SIGKILLed instance left the Prometheus targets as its etcd lease "
                f"expired (file: {targets.read_text()!r}): up == 0 cannot last the 1m "
                "MeshkitInstanceDown needs")
    finally:
        cluster.close()


@pytest.mark.timeout(90)
async def test_a_server_whose_keep_alive_fails_exports_registry_unhealthy(
        tmp_path: Path) -> None:
    """A service process (a server that dials nothing, as userd or summaryd) registers in
    etcd; etcd becomes unreachable, so its keep-alives fail: the registry reports
    ``writable=False`` and the instance will drop out of discovery when its lease ends.
    deploy/prometheus's ``MeshkitRegistryUnhealthy`` reads ``meshkit_registry_healthy``,
    which was produced from channels only: a serving process had no series at 0 and the
    alert could not fire for it. Its /metrics now carries the server's registry health,
    0 while the keep-alive fails."""

    from tests.support.echo import mesh_echo

    cluster = EtcdCluster(require_etcd_binary(), tmp_path / "etcd", size=1)
    await cluster.start()
    try:
        reg = EtcdRegistry.from_uri(cluster.uri(ttl_s=2, request_timeout_s=0.5,
                                                operation_timeout_s=1, connect_timeout_s=0.5))
        async with mesh_echo("regd", "r1", reg) as srv:
            admin = srv.stats().admin
            assert admin

            async def healthy() -> list[float]:
                async with aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=5)) as http, \
                        http.get(admin + "/metrics") as resp:
                    text = await resp.text()
                return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("meshkit_registry_healthy{")
                        and 'service="regd"' in line]

            assert await healthy() == [1.0]
            cluster.kill(0)  # the registry is unreachable from now on
            await until(lambda: reg.status().writable is False, timeout_s=30,
                        interval_s=0.1, what="the keep-alive failing")
            assert await healthy() == [0.0], (
                f"registry status {reg.status()!r}, but /metrics has no "
                "meshkit_registry_healthy{service=\"regd\"} at 0")
    finally:
        cluster.close()


# -- event loops: asyncio.run() again, a loop per thread ------------------------------------
async def _first_set(reg: EtcdRegistry, service: str) -> list[str]:
    """The ids of the first set a new watch of ``service`` yields."""
    watch = cast(AsyncGenerator[frozenset[Instance], None], reg.watch(service))
    try:
        return sorted(x.instance_id for x in await watch.__anext__())
    finally:
        await watch.aclose()


# The event-loop tests below prove a lease is kept (or not) by outliving it: a lease of
# 1 s (etcd's least; it ends 1-1.5 s unrenewed), renewed every ttl_s / 3 as with any ttl_s,
# makes that wait 2.5-3 s instead of 5-6 s. A renewal that came late on a loaded box costs
# a re-grant that puts the instances back, not the listing.
LOOPS: dict[str, Any] = {**FAST, "ttl_s": 1}


async def _register_then_list(reg: EtcdRegistry, *instances: Instance,
                              outlive_ttl: bool = False) -> list[str]:
    """Register ``instances`` (with ``outlive_ttl``, then wait for three renewals of the
    lease, a ``ttl_s``'s worth, up to 2.5 ``ttl_s``: with no keeper running none comes and
    the lease, every instance with it, ends ``ttl_s`` after register()) and list their
    service."""
    async with asyncio.timeout(20):
        for inst in instances:
            await reg.register(inst)
        if outlive_ttl:
            await _renewed_three_times(reg, reg.options.ttl_s * 2.5)
        return await _first_set(reg, instances[0].service)


async def _renewed_three_times(reg: EtcdRegistry, timeout_s: float) -> None:
    """Return once a keep-alive renewed ``reg``'s current lease three times from now, or
    after ``timeout_s`` (judged by the caller, by what etcd still lists)."""
    assert reg._lease is not None
    renewed = _count_renewals(reg, reg._lease)
    with contextlib.suppress(AssertionError):
        await until(lambda: len(renewed) >= 3, timeout_s=timeout_s)


async def _close(reg: EtcdRegistry) -> None:
    async with asyncio.timeout(8):
        await reg.close()


async def _tasks_named(prefix: str) -> list[str]:
    await asyncio.sleep(0.1)  # a cancel sent from another thread lands
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefix)]


@pytest.mark.timeout(60)
def test_works_in_a_later_asyncio_run(node: EtcdCluster) -> None:
    """A registry used in one ``asyncio.run()`` works in the next (a script with two
    phases, pytest-asyncio's loop per test with a registry built once): register, watch
    and close work, and the lease is kept alive by a keeper of the new loop. Its aiohttp
    session stayed bound to the first, closed loop: register() raised a bare
    ``RuntimeError: Event loop is closed`` (not RegistryError) and a watch ended at once
    without yielding; on uvloop the process aborted in watch."""
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    one, two = make_instance(service, 1), make_instance(service, 2)
    try:
        assert run_loop(_register_then_list(reg, one)) == [one.instance_id]
        assert run_loop(_register_then_list(reg, two, outlive_ttl=True)) == [
            one.instance_id, two.instance_id]
        assert run_loop(_register_then_list(reg, one)) == [one.instance_id, two.instance_id]
        assert reg.status().writable and reg.status().readable
    finally:
        run_loop(_close(reg))


@pytest.mark.timeout(60)
def test_a_keeper_whose_loop_closed_without_ending_it_is_replaced(node: EtcdCluster) -> None:
    """A registry whose keep-alive task belongs to a loop that was stopped and closed
    with it pending (a thread's loop; the task is never done) starts a keeper of the
    running loop at its next register(): the lease outlives ``ttl_s``. The pending task
    was taken as the keeper and the lease expired, every instance with it."""
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    one, two = make_instance(service, 1), make_instance(service, 2)
    other = LoopThread()
    try:
        other.run(reg.register(one))
    finally:
        other.close()
    try:
        assert run_loop(_register_then_list(reg, two, outlive_ttl=True)) == [
            one.instance_id, two.instance_id]
    finally:
        run_loop(_close(reg))


@pytest.mark.timeout(60)
def test_used_from_two_running_loops_and_closed_from_one(node: EtcdCluster) -> None:
    """One registry used by two loops running at once (servers in two threads): each
    registers and watches with a session of its own loop, each keeps the lease with a
    keep-alive of its own, and close() in one ends the other's watch, keep-alive and
    session in that loop (both iterators finish, nothing raises, no task left there)."""
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    other = LoopThread()
    try:
        one, two = make_instance(service, 1), make_instance(service, 2)
        other.run(reg.register(one))
        sets: list[list[str]] = []

        async def watch_until_closed() -> None:
            async for found in reg.watch(service):
                sets.append(sorted(x.instance_id for x in found))

        watching = asyncio.run_coroutine_threadsafe(watch_until_closed(), other.loop)

        async def register_watch_close() -> list[str]:
            first = await _register_then_list(reg, two, outlive_ttl=True)
            await until(lambda: [one.instance_id, two.instance_id] in sets,
                        timeout_s=5, what="the other loop's watch sees both")
            await _close(reg)
            return first

        assert run_loop(register_watch_close()) == [one.instance_id, two.instance_id]
        watching.result(8)  # ended by close(), in its own loop
        assert other.run(_tasks_named("meshkit-etcd-")) == []
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_lease_still_kept_after_the_last_registering_loop_ends(node: EtcdCluster) -> None:
    """Two servers in two threads share one registry. Thread A registers ``one`` and keeps
    serving; thread B registers ``two``, deregisters it and its ``asyncio.run()`` ends.
    ``one`` is still registered by a loop that runs, so its lease must stay alive. The
    keep-alive moved to B's loop at B's register() (A's keeper cancelled there) and
    ended with B's loop: nothing renewed the lease, and ``one`` left etcd after
    ``ttl_s``, for good."""
    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **LOOPS))
    one, two = make_instance(service, 1), make_instance(service, 2)
    a = LoopThread()
    try:
        a.run(reg.register(one))

        async def b_phase() -> None:
            async with asyncio.timeout(10):
                await reg.register(two)
                await asyncio.sleep(0.2)
                await reg.deregister(two)

        run_loop(b_phase())  # B's server stopped; its loop closed

        async def listed_after_ttls() -> list[str]:
            # three renewals from now come only from A's keeper (B's loop is closed);
            # without one the lease ends ttl_s after B's last renewal
            await _renewed_three_times(reg, reg.options.ttl_s * 3)
            async with asyncio.timeout(5):
                return await _first_set(reg, service)

        assert a.run(listed_after_ttls(), timeout_s=20) == [one.instance_id], (
            "the instance registered in the still-running loop lost its lease")
    finally:
        a.run(_close(reg))
        a.close()


@pytest.mark.timeout(60)
def test_session_of_an_ended_run_is_closed_not_left_to_gc(
        node: EtcdCluster, caplog: pytest.LogCaptureFixture) -> None:
    """The aiohttp session a registry made in an ``asyncio.run()`` is closed when that run
    ends, closed or not; close() in another loop closes those of loops still running, in
    theirs. One of an ended loop was dropped unclosed (at the next loop's first request;
    close() skipped closed loops): its connection to etcd stayed open until the garbage
    collector logged ``ERROR asyncio: Unclosed client session`` and ``Unclosed
    connector`` for every earlier run."""
    import gc
    import logging

    service = unique_service()
    reg = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), **FAST))
    other = LoopThread()

    async def register(n: int) -> None:
        async with asyncio.timeout(10):
            await reg.register(make_instance(service, n))

    gc.collect()  # what earlier tests left (a loop closed with its tasks pending leaks its
    caplog.clear()  # session or client by design): not this test's to report
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            run_loop(register(1))
            run_loop(register(2))
            other.run(register(3))  # a loop still running when close() comes
            run_loop(_close(reg))
            assert other.run(_tasks_named("meshkit-etcd-")) == []
            gc.collect()
        unclosed = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
        assert unclosed == []
    finally:
        other.close()


async def _serve_in_background(registry: Any, service: str) -> None:
    """A program whose ``asyncio.run()`` main starts ``serve()`` as a task and returns:
    asyncio.run() then cancels the tasks left, and a cancelled ``serve()`` drains
    (README: "A cancelled serve() ... drain[s] the same way"), deregistering first."""
    started = asyncio.Event()
    asyncio.get_running_loop().create_task(meshkit.serve(
        service, [add_echo("e1")], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="e1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None),
        on_started=lambda _server: started.set()))
    async with asyncio.timeout(10):
        await started.wait()


async def _listed_then_closed(reg: EtcdRegistry, service: str) -> list[str]:
    try:
        async with asyncio.timeout(5):
            return await _first_set(reg, service)
    finally:
        await _close(reg)


@pytest.mark.timeout(60)
def test_a_serve_task_cancelled_at_the_end_of_its_run_still_deregisters(
        node: EtcdCluster, caplog: pytest.LogCaptureFixture) -> None:
    """9a22815 gave each loop's aiohttp session to a task (meshkit-etcd-session) that
    closed it as soon as it was cancelled, relying on asyncio.run() cancelling the tasks
    left at its end. A serve() task left is cancelled in that same sweep and drains: its
    deregister() found the session closed ("deregister failed error='Session is
    closed'"), so the instance stayed in etcd, picked by every caller, until its lease
    expired (ttl_s, 20 s here). Now the session is closed once the tasks cancelled with
    it have ended."""
    import logging

    service = unique_service()
    opts = EtcdOptions(endpoints=tuple(node.endpoints), ttl_s=20, request_timeout_s=1.0,
                       operation_timeout_s=1.0)
    with caplog.at_level(logging.WARNING):
        run_loop(_serve_in_background(EtcdRegistry(opts), service))
    failed = [r.getMessage() for r in caplog.records if "deregister failed" in r.getMessage()]
    assert failed == []
    left = run_loop(_listed_then_closed(EtcdRegistry(opts), service))
    assert left == [], f"still registered after the serve() task drained: {left}"


@pytest.mark.timeout(30)
def test_the_registry_lock_is_one_across_loops() -> None:
    """register, deregister and the keep-alive's lease-loss and key-check steps take one
    lock (a deregistered instance is never put back, e55987f); with the loops of two
    threads using the registry at once it must exclude across them: a task of another
    loop waits for the holder, a cancelled waiter does not keep the lock, and a holder
    whose loop was closed with it pending (it never releases) is passed over."""
    lock = EtcdRegistry(EtcdOptions())._lease_lock
    entered = threading.Event()
    gates: list[asyncio.Event] = []  # the holder's, in the other loop

    async def hold() -> None:
        async with lock:
            gates.append(gate := asyncio.Event())
            entered.set()
            await gate.wait()

    async def take() -> None:
        async with lock:
            pass

    async def wait_for_the_other_loop() -> None:
        gives_up = asyncio.create_task(take())
        await asyncio.sleep(0.05)
        waits = asyncio.create_task(take())
        await asyncio.sleep(0.5)
        assert not waits.done() and not gives_up.done()  # the other loop holds it
        gives_up.cancel()
        other.loop.call_soon_threadsafe(gates[-1].set)
        async with asyncio.timeout(5):
            await waits
        assert gives_up.cancelled()

    other = LoopThread()
    try:
        holding = asyncio.run_coroutine_threadsafe(hold(), other.loop)
        assert entered.wait(5)
        run_loop(wait_for_the_other_loop())
        holding.result(5)
        entered.clear()
        asyncio.run_coroutine_threadsafe(hold(), other.loop)
        assert entered.wait(5)
    finally:
        other.close()  # stopped and closed, its holder pending

    async def take_in_time() -> None:
        async with asyncio.timeout(5):
            await take()

    run_loop(take_in_time())
    run_loop(take_in_time())  # released again


@pytest.mark.timeout(60)
def test_a_cancel_all_shutdown_is_not_held_by_the_session_owner() -> None:
    """e70d73a: the loop's meshkit-etcd-session owner, cancelled while the registry is
    open, waits for *every* task pending then (outlast_the_sweep), up to
    operation_timeout_s + request_timeout_s (12 s by default). The common graceful
    shutdown pattern (a task cancels all the others and gathers them) is itself one of
    those tasks, waiting for the owner: each waits for the other, and shutdown hangs for
    the whole bound instead of ending at once (the commit says "shutdown takes no
    longer")."""
    gw_loop = LoopThread()
    gw = _Gateway()
    gw_loop.run(gw.__aenter__())
    elapsed: list[float] = []

    async def main() -> None:
        reg = EtcdRegistry(EtcdOptions(endpoints=(gw.endpoint,), ttl_s=5))
        service = unique_service()
        async with asyncio.timeout(10):
            await reg.register(make_instance(service, 1))

        # the shutdown: cancel every other task and wait for them (this task is not one)
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        started = time.monotonic()
        try:
            for t in tasks:
                t.cancel()
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            elapsed.append(time.monotonic() - started)
            await reg.close()

    try:
        run_loop(main())
    finally:
        gw_loop.run(gw.__aexit__())
        gw_loop.close()
    assert elapsed[0] < 5.0, (
        f"cancel-all-and-gather shutdown took {elapsed[0]:.1f} s: the etcd session owner "
        f"waited for the shutdown task that waits for it")


@pytest.mark.timeout(60)
def test_two_registries_left_open_at_the_end_of_asyncio_run_do_not_hold_it() -> None:
    """e70d73a: at the end of asyncio.run() every registry's client owner is cancelled in
    the same sweep and waits for the loop's other pending tasks, up to its bound (etcd:
    operation_timeout_s + request_timeout_s, 12 s by default). With two registries (a
    server's and a channel's, each from registry_from_uri, or two clusters) each owner
    waits for the other owner, which waits for it: the program's exit is held for the
    whole bound though no task uses either client (the commit says "shutdown takes no
    longer")."""
    gw_loop = LoopThread()
    gw = _Gateway()
    gw_loop.run(gw.__aenter__())

    async def main() -> None:
        service = unique_service()
        for n in (1, 2):
            reg = EtcdRegistry(EtcdOptions(endpoints=(gw.endpoint,), ttl_s=5))
            async with asyncio.timeout(10):
                await reg.register(make_instance(service, n))  # left open, as a program may

    started = time.monotonic()
    try:
        run_loop(main())
    finally:
        elapsed = time.monotonic() - started
        gw_loop.run(gw.__aexit__())
        gw_loop.close()
    assert elapsed < 6.0, (
        f"asyncio.run() took {elapsed:.1f} s to end: each registry's client owner waited "
        f"for the other's")
