"""Test double for the Consul agent HTTP API — not Consul; follows the documented endpoints
listed below.

An aiohttp web application on ``127.0.0.1:<ephemeral port>`` playing a single-node Consul
agent, for exactly the calls :mod:`meshkit.discovery._consul` makes. Each endpoint follows
its page under https://developer.hashicorp.com/consul/api-docs/ (an ID in a path,
``<id>`` or ``<check_id>``, is the whole rest of the path, ``/`` and all, as Consul's agent
takes it, ``strings.TrimPrefix``, not one segment):

* ``PUT /v1/agent/service/register[?replace-existing-checks]`` — ``agent/service``
  (register service): JSON body with ``ID``, ``Name``, ``Address``, ``Port``, ``Tags``,
  ``Meta``, ``Weights``, ``Check``/``Checks``. Keys are matched case-insensitively and with
  or without underscores, as the agent's decoder does. Check types: ``TTL`` and ``GRPC``
  (``GRPC: "host:port/service"``, ``GRPCUseTLS``, ``Interval``, ``Timeout``), with
  ``CheckID``, ``Name``, ``Status`` (initial status, default ``critical``) and
  ``DeregisterCriticalServiceAfter``. Default check ids ``service:<id>`` (``Check``) and
  ``service:<id>:<n>`` (``Checks``), as Consul assigns them.
* ``PUT /v1/agent/service/deregister/<id>`` — ``agent/service`` (deregister service);
  404 ``Unknown service ID "<id>". Ensure that the service ID is passed, not the service
  name.`` for an unknown id, as Consul answers.
* ``GET /v1/agent/service/<id>`` — ``agent/service`` (get service configuration);
  404 ``unknown service ID: <id>``.
* ``PUT /v1/agent/check/pass/<check_id>[?note=]`` — ``agent/check`` (TTL check pass);
  404 ``Unknown check ID "<id>". Ensure that the check ID is passed, not the check name.``
  for an unknown check and 500 ``CheckID "<id>" does not have associated TTL`` for a
  non-TTL check, as Consul's agent does.
* ``GET /v1/health/service/<name>[?passing][&tag=][&index=&wait=]`` — ``health`` (list
  service instances) and ``features/blocking``: ``[{"Node": {...}, "Service": {ID, Service,
  Tags, Address, Port, Meta, Weights, ...}, "Checks": [...]}]`` with the ``X-Consul-Index``
  header, each check with its ``Type`` (``"ttl"``, ``"grpc"``), ``Notes``, and as Consul's
  agent writes a check registered through it: ``Interval``/``Timeout`` (Go duration
  strings) of an interval check, nothing of a TTL, ``Definition`` ``{}``; with ``index``
  the request is held until that service's index moves past it or ``wait`` (default 5m,
  at most 10m) elapses. No wait jitter is added (deterministic).
* ``GET /v1/catalog/services`` — ``catalog`` (list services): ``{name: [tags]}``.
* ``PUT /v1/catalog/register`` — ``catalog`` (register entity): ``{"Node", "Address",
  "Service": {ID, Service, Address, Port, Tags, Meta, Weights}}`` puts a service on another
  node of the datacenter, as that node's own agent would (``Service.ID`` defaults to
  ``Service.Service``, and is unique per node only, so two nodes may both run ``"orderd"``
  with the ID ``"orderd"``). Such a node has only its ``serfHealth`` check (passing), so its
  services are passing; they are listed by the health and catalog endpoints after the
  agent's own node. The double's own node (``node``) is refused here: use the agent
  endpoint.

A check starts with its ``Status`` (``critical`` when none is given: Consul's "Initial
Health Check Status", so that a service does not enter the pool before it is confirmed
healthy; checks configuration reference, ``status``), unless the agent already holds a check
with its ``CheckID``: registering again keeps that check's status and output, whatever
``Status`` the new definition carries, as Consul's agent does (``agent/agent.go``,
``addServiceInternal``: it snapshots ``State.AllChecks()`` and "Restore[s] the fields from
the snapshot", ``check.Status = prev.Status``). TTL checks turn ``critical`` when not
passed within their TTL; a check critical for longer than its
``DeregisterCriticalServiceAfter`` has its service removed (the double honours any value,
where Consul's minimum is one minute, so tests stay fast). ``GRPC`` checks really call
``grpc.health.v1.Health/Check`` every ``Interval`` (``GRPCUseTLS`` is not supported: such a
check stays critical). Consul runs an interval check for the first time after a random
stagger within its ``Interval`` (to avoid a thundering herd; hashicorp/consul#954), so
until then the check keeps its initial status; the double waits ``grpc_stagger_s`` before
a check's first run, by default the whole ``Interval`` (the stagger's worst case, and
deterministic).

ACLs (``api-docs/api-structure#authentication``), as an agent with ``acl.default_policy =
"deny"``: built with ``required_token``, the token that may do everything, sent in
``X-Consul-Token`` (or ``Authorization: Bearer``, or ``?token=``). A token the agent does not
know gets 403 ``ACL not found`` for every request. A request with no token (the anonymous
token) or with one of ``limited_tokens`` (tokens that exist but may neither read nor write
services and nodes) gets 403 ``Permission denied: token with AccessorID '...' lacks
permission ...`` for writes and for ``GET /v1/agent/service/<id>``, while the listing reads
(``/v1/health/service/<name>``, ``/v1/catalog/services``) answer 200 with what the token
may not read filtered out, here everything, as Consul's ACL filtering does. Such a filtered
answer carries ``X-Consul-Results-Filtered-By-ACLs: true`` when something was removed,
except for the anonymous token: Consul masks the header for a request without a token "to
prevent information leaking" (``agent/consul/rpc.go``, ``maskResultsFilteredByACLs``).
Every JSON answer carries ``X-Consul-Default-ACL-Policy`` (``deny`` in ACL mode, else
``allow``, Consul's default), as Consul's agents after 1.9 do.

Test hooks: :meth:`ConsulDouble.forget_all` (an agent restart that lost its state),
:meth:`ConsulDouble.reset_index` (the index jumps back), :meth:`ConsulDouble.touch` (the
index moves with no change: a spurious wakeup), :meth:`ConsulDouble.set_down` (every request
answers 500 ``No cluster leader``), :meth:`ConsulDouble.stop`/:meth:`ConsulDouble.start`
(connection refused, then back on the same port). Every request is recorded in
:attr:`ConsulDouble.requests`; TTL passes are counted by CheckID (:attr:`ConsulDouble.passes`)
and by service ID (:attr:`ConsulDouble.service_passes`), and
:meth:`ConsulDouble.service_check` finds a service's TTL or gRPC check whatever its CheckID.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import ssl
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ConsulDouble", "RecordedRequest"]

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parse a Go duration (``"30s"``, ``"250ms"``, ``"1m30s"``) into seconds."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}")
    return total


def go_duration_string(seconds: float) -> str:
    """Seconds as Go's ``time.Duration.String`` writes them: ``"2s"``, ``"1m0s"``,
    ``"1h0m0s"``, ``"1.5s"``, ``"250ms"``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{ns / size:.9f}".rstrip("0").rstrip(".") + unit
    h, rest = divmod(ns, 3_600_000_000_000)
    m, rest = divmod(rest, 60_000_000_000)
    sec = f"{rest / 1e9:.9f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{sec}"
    return f"{m}m{sec}" if m else sec


def _norm(d: Any) -> dict[str, Any]:
    """Keys lower-cased without underscores: ``GRPCUseTLS`` == ``grpc_use_tls``."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    return {str(k).lower().replace("_", ""): v for k, v in d.items()}


@dataclass
class RecordedRequest:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None

    @property
    def token(self) -> str | None:
        """The ACL token the request carried, if any."""
        auth = self.headers.get("authorization", "")
        return (self.headers.get("x-consul-token") or self.query.get("token")
                or (auth[7:] if auth.lower().startswith("bearer ") else None))


_RECORDED: web.RequestKey[RecordedRequest] = web.RequestKey("recorded", RecordedRequest)
#: In ACL mode, whether the request may read and write everything (``required_token``).
_ALL_RIGHTS: web.RequestKey[bool] = web.RequestKey("all_rights", bool)
#: The listing reads Consul filters by ACLs (200, entries removed) rather than refuse.
_FILTERED_READS = ("/v1/health/service/", "/v1/catalog/services")


@dataclass
class _Check:
    check_id: str
    name: str
    service_id: str
    notes: str = ""
    ttl_s: float | None = None
    grpc: str | None = None
    grpc_use_tls: bool = False
    interval_s: float = 10.0
    timeout_s: float = 10.0
    deregister_after_s: float | None = None
    status: str = "critical"
    output: str = ""
    last_pass: float = field(default_factory=time.monotonic)
    critical_since: float | None = None
    task: asyncio.Task[None] | None = None

    def to_json(self, node: str, service: _Service) -> dict[str, Any]:
        return {
            "Node": node, "CheckID": self.check_id, "Name": self.name, "Status": self.status,
            "Notes": self.notes, "Output": self.output, "ServiceID": service.id,
            "ServiceName": service.name, "ServiceTags": list(service.tags),
            "Type": "ttl" if self.ttl_s is not None else "grpc",
            **self.timing(),
            "Definition": {}, "CreateIndex": 0, "ModifyIndex": 0,
        }

    def timing(self) -> dict[str, Any]:
        """What the agent tells of a check registered through it (``agent/agent.go``,
        ``addServiceInternal``: ``structs.HealthCheck{Interval: ..., Timeout: ...}``, set
        only when not zero): an interval check's ``Interval`` and ``Timeout`` as Go
        duration strings (``"10s"``, ``"1m0s"``), nothing of a TTL check's TTL; its
        ``Definition`` stays empty (``{}``: only ``/v1/catalog/register`` fills it)."""
        if self.ttl_s is not None:
            return {}
        return {"Interval": go_duration_string(self.interval_s),
                "Timeout": go_duration_string(self.timeout_s)}


@dataclass
class _Service:
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weights: dict[str, int]
    checks: dict[str, _Check] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "Kind": "", "ID": self.id, "Service": self.name, "Tags": list(self.tags),
            "Address": self.address, "Meta": dict(self.meta), "Port": self.port,
            "Weights": dict(self.weights), "EnableTagOverride": False,
            "TaggedAddresses": {}, "CreateIndex": 0, "ModifyIndex": 0,
        }


class ConsulDouble:
    """A single-node Consul agent stand-in; see the module docstring for what it follows.

    Args:
        required_token: when set, the ACL token that may do everything (ACL mode, default
            policy deny; see the module docstring for what others get).
        limited_tokens: in ACL mode, tokens the agent knows that may neither read nor write
            services and nodes: their writes are refused 403, their listings filtered.
        ssl_context: serve HTTPS with this server context (e.g. one requiring client certs).
        node: the node name reported in health entries.
        reap_interval_s: how often TTLs and ``DeregisterCriticalServiceAfter`` are checked.
        grpc_stagger_s: seconds from a gRPC check's registration to its first run; None
            (default) means its ``Interval``, the longest stagger Consul may choose.

    Use ``async with ConsulDouble() as double:`` or ``await start()`` / ``await stop()``;
    :attr:`addr` is ``127.0.0.1:<port>``, :attr:`url` ``http(s)://127.0.0.1:<port>``.
    """

    def __init__(
        self,
        *,
        required_token: str | None = None,
        limited_tokens: Collection[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        node: str = "consul-double",
        reap_interval_s: float = 0.02,
        grpc_stagger_s: float | None = None,
    ) -> None:
        self.required_token = required_token
        self.limited_tokens = frozenset(limited_tokens)
        self.ssl_context = ssl_context
        self.node = node
        self.reap_interval_s = reap_interval_s
        self.grpc_stagger_s = grpc_stagger_s
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.services: dict[str, _Service] = {}
        self.passes: Counter[str] = Counter()
        #: TTL passes by service ID (whatever the CheckIDs of its registrations)
        self.service_passes: Counter[str] = Counter()
        self.status_history: list[tuple[str, str]] = []
        self.registrations: list[dict[str, Any]] = []
        #: services on other nodes (PUT /v1/catalog/register): node -> (address, {id: svc})
        self.other_nodes: dict[str, tuple[str, dict[str, _Service]]] = {}
        self._index = 1
        self._svc_index: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._down = False
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        # every gRPC check task still running, also those of services forgotten or
        # deregistered (cancelled but maybe not finished): close() waits for all of them
        self._check_tasks: set[asyncio.Task[None]] = set()
        self.app = web.Application(middlewares=[self._middleware])
        self.app.router.add_put("/v1/agent/service/register", self._register)
        # an ID is the whole rest of the path, "/" and all, as Consul's agent endpoints
        # take it (strings.TrimPrefix of the path), not one segment
        self.app.router.add_put("/v1/agent/service/deregister/{id:.+}", self._deregister)
        self.app.router.add_get("/v1/agent/service/{id:.+}", self._agent_service)
        self.app.router.add_put("/v1/agent/check/pass/{check_id:.+}", self._check_pass)
        self.app.router.add_get("/v1/health/service/{name}", self._health_service)
        self.app.router.add_get("/v1/catalog/services", self._catalog_services)
        self.app.router.add_put("/v1/catalog/register", self._catalog_register)

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def addr(self) -> str:
        """``127.0.0.1:<port>`` (what ``CONSUL_HTTP_ADDR`` would hold)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` when serving TLS)."""
        return f"{'https' if self.ssl_context else 'http'}://{self.addr}"

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port the first time, the same port after)."""
        self._stopping = False
        runner = web.AppRunner(self.app, shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.ssl_context,
                           reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_loop(), name="consul-double-reaper")

    async def stop(self) -> None:
        """Stop listening (clients get connection refused); state is kept for :meth:`start`."""
        self._stopping = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        """Stop listening and end every background task (reaper, gRPC checks)."""
        await self.stop()
        tasks = list(self._check_tasks)
        if self._reaper is not None:
            tasks.append(self._reaper)
            self._reaper = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ConsulDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- test hooks ----------------------------------------------------------------------
    def forget_all(self) -> None:
        """Lose every service and check, as an agent restarted without persisted state."""
        names = {s.name for s in self.services.values()}
        for svc in self.services.values():
            self._stop_checks(svc)
        self.services.clear()
        for name in names:
            self._bump(name)

    def reset_index(self, to: int = 1) -> None:
        """Make the raft index (and every service's index) jump back to ``to``."""
        self._index = to
        for name in self._svc_index:
            self._svc_index[name] = to
        self._notify()

    def touch(self, service: str) -> None:
        """Move ``service``'s index without changing anything (a spurious wakeup)."""
        self._bump(service)

    def set_down(self, down: bool) -> None:
        """While down, every request answers 500 ``No cluster leader``."""
        self._down = down
        self._notify()

    def index_of(self, service: str) -> int:
        """The ``X-Consul-Index`` that ``/v1/health/service/<service>`` would return now."""
        return self._svc_index.get(service, 1)

    def check(self, check_id: str) -> _Check | None:
        """The check with this id, if registered."""
        for svc in self.services.values():
            if check_id in svc.checks:
                return svc.checks[check_id]
        return None

    def service_check(self, service_id: str, kind: str = "ttl") -> _Check | None:
        """The ``kind`` check (``"ttl"`` or ``"grpc"``) of the service with this ID, if it
        has one (the first registered, if several)."""
        svc = self.services.get(service_id)
        for check in (svc.checks.values() if svc is not None else ()):
            if (check.ttl_s is not None) == (kind == "ttl"):
                return check
        return None

    def health_requests(self, service: str) -> list[RecordedRequest]:
        """The recorded ``GET /v1/health/service/<service>`` requests, oldest first."""
        return [r for r in self.requests if r.path == f"/v1/health/service/{service}"]

    # -- internals -----------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _bump(self, service: str) -> None:
        self._index += 1
        self._svc_index[service] = self._index
        self._notify()

    def _set_status(self, svc: _Service, check: _Check, status: str, output: str) -> None:
        changed = status != check.status or output != check.output
        if status != check.status:
            self.status_history.append((check.check_id, status))
            check.critical_since = time.monotonic() if status == "critical" else None
        check.status, check.output = status, output
        if changed:
            self._bump(svc.name)

    def _stop_checks(self, svc: _Service) -> None:
        for c in svc.checks.values():
            if c.task is not None:
                c.task.cancel()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval_s)
            now = time.monotonic()
            for svc in list(self.services.values()):
                for c in svc.checks.values():
                    if (c.ttl_s is not None and c.status != "critical"
                            and now - c.last_pass > c.ttl_s):
                        self._set_status(svc, c, "critical", "TTL expired")
                if any(c.deregister_after_s is not None and c.critical_since is not None
                       and now - c.critical_since > c.deregister_after_s
                       for c in svc.checks.values()):
                    self._stop_checks(svc)
                    del self.services[svc.id]
                    self._bump(svc.name)

    async def _grpc_loop(self, svc: _Service, check: _Check) -> None:
        assert check.grpc is not None
        target, _, health_service = check.grpc.partition("/")
        # The first run comes after the stagger; until then the initial Status holds.
        stagger = check.interval_s if self.grpc_stagger_s is None else self.grpc_stagger_s
        await asyncio.sleep(stagger)
        while True:
            if check.grpc_use_tls:
                status, output = "critical", "GRPCUseTLS is not supported by the test double"
            else:
                try:
                    async with grpc.aio.insecure_channel(target) as channel:
                        stub = health_pb2_grpc.HealthStub(channel)
                        resp = await stub.Check(
                            health_pb2.HealthCheckRequest(service=health_service),
                            timeout=check.timeout_s,
                        )
                    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
                    status = "passing" if serving else "critical"
                    output = f"gRPC check {check.grpc}: {resp.status}"
                except grpc.aio.AioRpcError as exc:
                    status, output = "critical", f"gRPC check {check.grpc}: {exc.code()}"
                except (grpc.aio.UsageError, OSError) as exc:  # a channel closed under it
                    status, output = "critical", f"gRPC check {check.grpc}: {exc!r}"
            if self.services.get(svc.id) is not svc:
                return
            self._set_status(svc, check, status, output)
            await asyncio.sleep(check.interval_s)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(
            method=request.method, path=request.path, query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()}, body=body,
        )
        self.requests.append(rec)
        request[_RECORDED] = rec
        if self._down or self._stopping:
            return web.Response(status=500, text="No cluster leader")
        request[_ALL_RIGHTS] = True
        if self.required_token is not None:
            token = rec.token
            if token and token != self.required_token and token not in self.limited_tokens:
                return web.Response(status=403, text="ACL not found")
            if token != self.required_token:
                # the anonymous token or a limited one: listings are filtered, not refused
                request[_ALL_RIGHTS] = False
                if request.method != "GET" or not request.path.startswith(_FILTERED_READS):
                    accessor = ANONYMOUS_ACCESSOR if not token else (
                        f"00000000-0000-0000-0000-{hashlib.sha256(token.encode()).hexdigest()[:12]}")
                    return web.Response(status=403, text=(
                        f"Permission denied: token with AccessorID '{accessor}' lacks "
                        "permission"))
        result: web.StreamResponse = await handler(request)
        return result

    def _json(self, data: Any, index: int | None = None, *,
              filtered: bool = False) -> web.Response:
        """A JSON answer with Consul's headers; ``filtered``: entries were removed by ACLs
        for a request that carried a token (``X-Consul-Results-Filtered-By-ACLs``)."""
        headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0",
                   "X-Consul-Default-ACL-Policy":
                       "deny" if self.required_token is not None else "allow"}
        if index is not None:
            headers["X-Consul-Index"] = str(index)
        if filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return web.json_response(data, headers=headers)

    def _acl_filtered(self, request: web.Request, data: Any, index: int) -> web.Response:
        """The answer to a listing read: ``data`` as it is for a token that may read
        everything, else with every entry filtered out (the token may read none), the
        header saying so only for a request that carried a token (Consul masks it for the
        anonymous token)."""
        if request[_ALL_RIGHTS]:
            return self._json(data, index)
        return self._json(type(data)(), index,
                          filtered=bool(data) and request[_RECORDED].token is not None)

    # -- handlers ------------------------------------------------------------------------
    def _parse_check(self, raw: Any, default_id: str, service_id: str) -> _Check:
        c = _norm(raw)
        check_id = str(c.get("checkid") or c.get("id") or default_id)
        ttl, target = c.get("ttl"), c.get("grpc")
        if bool(ttl) == bool(target):
            raise ValueError("the double supports checks with exactly one of TTL or GRPC")
        dereg = c.get("deregistercriticalserviceafter")
        check = _Check(
            check_id=check_id, name=str(c.get("name") or f"Service '{service_id}' check"),
            service_id=service_id, notes=str(c.get("notes") or ""),
            deregister_after_s=parse_duration(dereg) if dereg else None,
            status=str(c.get("status") or "critical"),
        )
        if check.status not in ("passing", "warning", "critical"):
            raise ValueError(f"Invalid check status: {check.status!r}")
        if ttl:
            check.ttl_s = parse_duration(ttl)
            if check.ttl_s <= 0:
                raise ValueError("TTL must be > 0 for TTL checks")
        else:
            interval = c.get("interval")
            if not interval or parse_duration(interval) <= 0:
                raise ValueError("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP "
                                 "or GRPC checks")
            check.grpc = str(target)
            check.grpc_use_tls = bool(c.get("grpcusetls"))
            check.interval_s = parse_duration(interval)
            if c.get("timeout"):
                check.timeout_s = parse_duration(c["timeout"])
        if check.status == "critical":
            check.critical_since = time.monotonic()
        return check

    async def _register(self, request: web.Request) -> web.Response:
        rec = request[_RECORDED]
        try:
            body = _norm(rec.body)
            name = body.get("name")
            if not name:
                return web.Response(status=400, text="Missing service name")
            sid = str(body.get("id") or name)
            weights = _norm(body.get("weights") or {"Passing": 1, "Warning": 1})
            passing, warning = int(weights.get("passing", 1)), int(weights.get("warning", 1))
            if passing < 1:
                return web.Response(status=400, text="Passing must be greater than 0")
            raw_checks: list[tuple[Any, str]] = []
            if body.get("check"):
                raw_checks.append((body["check"], f"service:{sid}"))
            for i, c in enumerate(body.get("checks") or [], start=1):
                raw_checks.append((c, f"service:{sid}:{i}"))
            checks = [self._parse_check(c, default, sid) for c, default in raw_checks]
            meta = body.get("meta") or {}
            if not all(isinstance(v, str) for v in meta.values()):
                raise ValueError("Meta values must be strings")
            svc = _Service(
                id=sid, name=str(name), address=str(body.get("address") or ""),
                port=int(body.get("port") or 0), tags=list(body.get("tags") or []),
                meta=dict(meta), weights={"Passing": passing, "Warning": warning},
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return web.Response(status=400, text=f"Request decode failed: {exc}")
        self.registrations.append(rec.body)
        # A CheckID the agent holds keeps its current status and output (Consul's
        # addServiceInternal restores them from its snapshot of every check).
        held = {cid: c for s in self.services.values() for cid, c in s.checks.items()}
        for c in checks:
            prev = held.get(c.check_id)
            if prev is not None:
                c.status, c.output, c.critical_since = (prev.status, prev.output,
                                                        prev.critical_since)
        replace = rec.query.get("replace-existing-checks", "false").lower() in ("", "1", "true")
        old = self.services.get(sid)
        if old is not None:
            kept = {} if replace else {k: c for k, c in old.checks.items()
                                       if k not in {n.check_id for n in checks}}
            for k, c in old.checks.items():
                if k not in kept and c.task is not None:
                    c.task.cancel()
            svc.checks.update(kept)
            if old.name != svc.name:
                self._bump(old.name)
        for c in checks:
            svc.checks[c.check_id] = c
        self.services[sid] = svc
        for c in checks:
            if c.grpc is not None:
                c.task = asyncio.create_task(self._grpc_loop(svc, c))
                self._check_tasks.add(c.task)
                c.task.add_done_callback(self._check_tasks.discard)
        self._bump(svc.name)
        return web.Response(status=200)

    async def _deregister(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        svc = self.services.pop(sid, None)
        if svc is None:
            return web.Response(status=404, text=(
                f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                "not the service name."))
        self._stop_checks(svc)
        self._bump(svc.name)
        return web.Response(status=200)

    async def _agent_service(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        svc = self.services.get(sid)
        if svc is None:
            return web.Response(status=404, text=f"unknown service ID: {sid}")
        data = svc.to_json()
        content_hash = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        data["ContentHash"] = content_hash
        return web.json_response(data, headers={"X-Consul-ContentHash": content_hash})

    async def _check_pass(self, request: web.Request) -> web.Response:
        check_id = request.match_info["check_id"]
        for svc in self.services.values():
            check = svc.checks.get(check_id)
            if check is None:
                continue
            if check.ttl_s is None:
                return web.Response(status=500,
                                    text=f'CheckID "{check_id}" does not have associated TTL')
            self.passes[check_id] += 1
            self.service_passes[svc.id] += 1
            check.last_pass = time.monotonic()
            self._set_status(svc, check, "passing", request.query.get("note", ""))
            return web.Response(status=200)
        return web.Response(status=404, text=(
            f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
            "not the check name."))

    async def _block(self, request: web.Request, current: Any) -> web.Response | None:
        """Hold a blocking query until ``current()`` > ``index`` or ``wait`` elapses."""
        q = request.query
        if "index" not in q:
            return None
        try:
            index = int(q["index"])
        except ValueError:
            return web.Response(status=400, text="Invalid index")
        try:
            wait = min(parse_duration(q["wait"]) if "wait" in q else 300.0, 600.0)
        except ValueError:
            return web.Response(status=400, text="Invalid wait time")
        deadline = time.monotonic() + wait
        while current() <= index and not (self._down or self._stopping):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()
        if self._down or self._stopping:
            return web.Response(status=500, text="No cluster leader")
        return None

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def current() -> int:
            return self._svc_index.get(name, 1)

        early = await self._block(request, current)
        if early is not None:
            return early
        q = request.query
        passing = "passing" in q and q["passing"].lower() not in ("0", "false", "f")
        tags = q.getall("tag", [])
        node, serf = self._node_json(self.node, "127.0.0.1")
        out = []
        for svc in sorted(self.services.values(), key=lambda s: s.id):
            if svc.name != name or any(t not in svc.tags for t in tags):
                continue
            if passing and any(c.status != "passing" for c in svc.checks.values()):
                continue
            out.append({
                "Node": node, "Service": svc.to_json(),
                "Checks": [serf, *(c.to_json(self.node, svc) for c in svc.checks.values())],
            })
        for other in sorted(self.other_nodes):
            address, services = self.other_nodes[other]
            other_node, other_serf = self._node_json(other, address)
            for svc in sorted(services.values(), key=lambda s: s.id):
                if svc.name == name and all(t in svc.tags for t in tags):
                    out.append({"Node": other_node, "Service": svc.to_json(),
                                "Checks": [other_serf]})
        return self._acl_filtered(request, out, current())

    def _node_json(self, name: str, address: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A health entry's ``Node`` object and the node's passing ``serfHealth`` check."""
        node_id = ("0000000000d0" if name == self.node
                   else hashlib.sha256(name.encode()).hexdigest()[:12])
        node = {
            "ID": f"00000000-0000-0000-0000-{node_id}", "Node": name, "Address": address,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": address, "wan": address}, "Meta": {},
            "CreateIndex": 0, "ModifyIndex": 0,
        }
        serf = {"Node": name, "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "Definition": {}, "CreateIndex": 0, "ModifyIndex": 0}
        return node, serf

    async def _catalog_register(self, request: web.Request) -> web.Response:
        rec = request[_RECORDED]
        try:
            body = _norm(rec.body)
            node, address = str(body.get("node") or ""), str(body.get("address") or "")
            if not node or not address:
                return web.Response(status=400, text="Must provide node and address")
            if node == self.node:
                raise ValueError("the double takes its own node's services on the agent API")
            raw = _norm(body.get("service") or {})
            name = str(raw.get("service") or "")
            if not name:
                raise ValueError("Must provide service name")
            weights = _norm(raw.get("weights") or {"Passing": 1, "Warning": 1})
            svc = _Service(
                id=str(raw.get("id") or name), name=name,
                address=str(raw.get("address") or ""), port=int(raw.get("port") or 0),
                tags=list(raw.get("tags") or []), meta=dict(raw.get("meta") or {}),
                weights={"Passing": int(weights.get("passing", 1)),
                         "Warning": int(weights.get("warning", 1))},
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return web.Response(status=400, text=f"Request decode failed: {exc}")
        _, services = self.other_nodes.setdefault(node, (address, {}))
        services[svc.id] = svc
        self._bump(svc.name)
        return self._json(True)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        def current() -> int:
            return self._index

        early = await self._block(request, current)
        if early is not None:
            return early
        out: dict[str, list[str]] = {"consul": []}
        others = [svc for _, services in self.other_nodes.values() for svc in services.values()]
        for svc in [*self.services.values(), *others]:
            out[svc.name] = sorted(set(out.get(svc.name, [])) | set(svc.tags))
        return self._acl_filtered(request, out, current())
