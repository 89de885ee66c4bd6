"""The fault scenarios of issue 12, one class each.

Every scenario runs on a fresh stack (``userd-1``, ``orderd-1``, ``orderd-2``, mTLS, JWTs,
a local registry with a 2 s TTL; in quick mode those marked ``shares_stack`` may run on the
stack of the one before, see :mod:`tests.faults._runner`) under its own 16-caller workload,
and is judged by the shared criteria of :mod:`tests.faults._runner` (recovery, no lost or
duplicated order, no internals in status messages, no process exiting) plus the criteria
in its docstring.
Durations are given as *quick / long* mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

import meshkit
from examples.ecom import mesh
from examples.ecom.demo import edge_tls
from examples.ecom.proto import order_pb2, user_pb2
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.faults._certs import odd_id_workload, sub_ca_workload
from tests.faults._checks import count_events, log_events, memory, metric, scrape, warnings_of
from tests.faults._h2 import unary_call
from tests.faults._runner import TRUST_DOMAIN, Run, Scenario, p50
from tests.faults._stack import StackSpec
from tests.faults._workload import Call

_ORDERS = "/ecom.v1.OrderService"
_REGISTRY_WORDS = ("registry", "heartbeat")  # what registry warnings talk about
_USERS = "/ecom.v1.UserService"


def _order_ids(run: Run) -> dict[str, tuple[int, int]]:
    return {s.instance_id: (s.calls, s.failures)
            for s in run.workload.orders_channel.stats().endpoints}


def _spread(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    parts = []
    for iid, (calls, fails) in sorted(after.items()):
        c0, f0 = before.get(iid, (0, 0))
        if calls < c0:  # the endpoint left the registry and came back: counters restarted
            c0 = f0 = 0
        parts.append(f"{iid} {calls - c0} attempts ({fails - f0} failed)")
    return ", ".join(parts)


async def _poll(cond: Callable[[], Awaitable[bool]], timeout_s: float,
                interval_s: float = 0.2) -> float | None:
    """Poll an async predicate; seconds it took, or ``None`` if not true in time."""
    t0 = time.monotonic()
    while True:
        if await cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            return None
        await asyncio.sleep(interval_s)


# -- 1 ------------------------------------------------------------------------------------
def _wal_writer(shm: Path) -> int | None:
    """The pid holding SQLite's WAL write lock (byte 120 of the ``-shm`` file), per
    ``/proc/locks``, or ``None``."""
    try:
        inode = shm.stat().st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        f = line.split()
        # "1: POSIX  ADVISORY  WRITE 4242 fd:01:123456 120 120"
        if len(f) >= 8 and f[1] == "POSIX" and f[3] == "WRITE" and f[6] == "120" \
                and f[5].rsplit(":", 1)[-1] == str(inode):
            return int(f[4])
    return None


class SigStop(Scenario):
    """SIGSTOP one order service for 6 / 10 s under 16 callers while it holds the write
    lock of the SQLite file both order services share, then SIGCONT.

    The stop is aimed: ``/proc/locks`` is polled until an order service holds SQLite's WAL
    write lock, and the stop is kept only if it still does once stopped (up to 5 s of
    tries; else the busiest instance is stopped anyway and the note says so). Its
    transaction then outlives the callers' 5 s deadlines, which cancel it; today that
    leaves the store wedged.

    Criteria: the shared ones, with recovery within 5 s of SIGCONT. Reported: how the
    order client's attempts spread over the instances while stopped and after.
    """

    name = "sigstop"
    item = "1"

    async def _stop_lock_holder(self, run: Run, tries_s: float) -> tuple[str, bool]:
        """Stop the order service holding the write lock: ``(instance id, held)``."""
        shm = run.env.workdir / "orderd.db-shm"
        pids = {run.env.stack.pid(i): i for i in run.env.orderd_ids}
        give_up = time.monotonic() + tries_s
        while time.monotonic() < give_up:
            iid = pids.get(_wal_writer(shm) or 0)
            if iid is not None:
                run.env.stack.pause(iid)
                if pids.get(_wal_writer(shm) or 0) == iid:
                    return iid, True
                run.env.stack.resume(iid)  # it let go just before the stop
            await asyncio.sleep(0.001)
        busiest = max(_order_ids(run).items(), key=lambda kv: kv[1][0])[0]
        run.env.stack.pause(busiest)
        return busiest, False

    async def inject(self, run: Run) -> None:
        self.before = _order_ids(run)
        run.start_fault()
        iid, held = await self._stop_lock_holder(run, 5.0)
        run.fault_start = time.monotonic()
        run.note(f"SIGSTOP {iid} " + ("while it held the SQLite write lock" if held else
                                      "(never caught holding the write lock)"))
        await asyncio.sleep(6.0 if run.quick else 10.0)
        run.env.stack.resume(iid)
        run.end_fault()
        self.at_cont = _order_ids(run)

    async def check(self, run: Run) -> None:
        run.note("attempts while stopped: " + _spread(self.before, self.at_cont))
        run.note("attempts after SIGCONT: " + _spread(self.at_cont, _order_ids(run)))


# -- 2 and 9 ------------------------------------------------------------------------------
def _registry_files(run: Run) -> list[Path]:
    d = run.env.registry_dir
    return [p for p in (d / "registry.db", d / "registry.db-wal", d / "registry.db-shm")
            if p.exists()]


async def _registered(run: Run) -> dict[str, set[str]]:
    """What a fresh registry client reads from the registry file now."""
    reg = LocalRegistry(LocalOptions(path=run.env.registry_dir, ttl_s=run.env.spec.ttl_s,
                                     busy_timeout_s=1.0))
    try:
        return {svc: {i.instance_id for i in await reg.instances(svc)}
                for svc in ("userd", "orderd")}
    finally:
        await reg.close()


class RegistryReadOnly(Scenario):
    """Make the local registry read-only for 4 / 10 s: ``chmod 0444`` on its files and
    ``0555`` on its directory, as in the issue, and ``chattr +i`` on the database and its
    ``-wal``, because a mode change does not reach the file handles running processes
    already hold (only the immutable flag makes their writes fail; the ``-shm`` is left
    alone: it is written through a shared mapping, where an immutable file gives SIGBUS).
    Heartbeats then fail and the entries pass their 2 s TTL. Then restore everything.

    Criteria: callers are not hurt at all (recovery 0-1 s counted from the fault's start:
    the watchers keep the last known good set); each process logs "heartbeat failed" (or
    any other registry warning) at most twice, not once per heartbeat; after the
    restore every instance is registered again within 3 TTLs.
    """

    name = "registry-readonly"
    item = "2, 9"
    hurts = False
    recovery_bound_s = 1.0

    async def inject(self, run: Run) -> None:
        env = run.env
        files = _registry_files(run)
        run.start_fault()
        for path in files:
            env.chmod(path, 0o444)
        env.chmod(env.registry_dir, 0o555)
        # Not the -shm: processes write it through a shared mapping, and a store to an
        # immutable file's mapping is a SIGBUS, a crash rather than a refused write.
        immutable = [env.make_immutable(p) for p in files if not p.name.endswith("-shm")]
        if not all(immutable):
            run.problem("chattr +i failed on the registry files (file system?): running "
                        "processes could still write; the fault did not happen")
        await asyncio.sleep(4.0 if run.quick else 10.0)
        env.restore_modes()
        run.end_fault()

    async def check(self, run: Run) -> None:
        want = {"userd": {"userd-1"}, "orderd": set(run.env.orderd_ids)}

        async def all_back() -> bool:
            try:
                got = await _registered(run)
            except Exception:
                return False
            return all(want[s] <= got[s] for s in want)

        took = await _poll(all_back, 3 * run.env.spec.ttl_s)
        if took is None:
            run.problem("instances not registered again within 3 TTLs of the restore")
        for iid in run.env.stack.procs:
            n = count_events(run.env.log(iid), "heartbeat failed")
            w = len(warnings_of(run.env.log(iid), *_REGISTRY_WORDS))
            run.note(f"{iid}: {n} 'heartbeat failed' lines, {w} registry warnings")
            if max(n, w) > 2:
                run.problem(f"{iid} logged {max(n, w)} registry warnings during one "
                            "outage (at most 2)")


# -- 3 ------------------------------------------------------------------------------------
class RegistryDeleted(Scenario):
    """Delete the local registry's file (and its -wal/-shm) under running processes, then
    start a new order-service instance ``orderd-3``, which creates a new, empty file.

    Criteria: callers are not hurt (recovery 0-1 s from the unlink); within 10 s a fresh
    registry client reads every live instance (userd-1, orderd-1..3) from the new file,
    i.e. the old processes noticed, re-opened and re-registered; the workload's own
    channel (an old watcher) sees ``orderd-3``; each old process writes at most 2
    registry warnings about it (logged once, not per heartbeat).
    """

    name = "registry-deleted"
    item = "3"
    hurts = False
    recovery_bound_s = 1.0

    async def inject(self, run: Run) -> None:
        run.start_fault()
        for path in _registry_files(run):
            path.unlink()
        run.end_fault()
        await run.env.stack.start("orderd", "orderd-3", db=run.env.orderd_db)

    async def check(self, run: Run) -> None:
        want = {"userd": {"userd-1"}, "orderd": {"orderd-1", "orderd-2", "orderd-3"}}
        seen: dict[str, set[str]] = {}

        async def all_there() -> bool:
            nonlocal seen
            try:
                seen = await _registered(run)
            except Exception:
                return False
            return all(want[s] <= seen[s] for s in want)

        if await _poll(all_there, 10.0) is None:
            run.problem(f"after 10 s the new registry file lists {seen or 'nothing'}; "
                        f"expected {want}")

        async def watcher_sees() -> bool:
            return "orderd-3" in {ep.key for ep in run.workload.orders_channel.endpoints()}

        if await _poll(watcher_sees, 5.0) is None:
            run.problem("the workload's registry watcher never saw orderd-3")
        for iid in ("userd-1", "orderd-1", "orderd-2"):
            w = len(warnings_of(run.env.log(iid), *_REGISTRY_WORDS))
            run.note(f"{iid}: {w} registry warnings")
            if w > 2:
                run.problem(f"{iid} logged {w} registry warnings (at most 2)")


# -- 4 ------------------------------------------------------------------------------------
class DatabaseDown(Scenario):
    """Order services on PostgreSQL through a TCP proxy; stop the proxy (connections reset,
    new ones refused) for 2 / 10 s, then start it again.

    Criteria: the shared ones with recovery within 5 s of the restart; every call that
    failed did so with ``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` (never ``UNKNOWN`` or
    ``INTERNAL``), so PlaceOrder, which carries an idempotency key, is retried.
    """

    name = "db-down"
    item = "4"
    spec = StackSpec(database="postgres")
    quick = True

    async def inject(self, run: Run) -> None:
        proxy = run.env.pg_proxy
        assert proxy is not None
        run.start_fault()
        await proxy.stop()
        await asyncio.sleep(2.0 if run.quick else 10.0)
        await proxy.start()
        run.end_fault()

    async def check(self, run: Run) -> None:
        bad = Counter(c.code.name for c in run.workload.calls if not c.ok and c.code not in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
        if bad:
            run.problem(f"database outage surfaced as {dict(bad)} (must be UNAVAILABLE)")
        retry = run.workload.orders_channel.retry
        if retry is not None:
            run.note(f"order client retries: {retry.stats.retries}")


# -- 5 ------------------------------------------------------------------------------------
_MALFORMED = (b"\xff", b"\x0a\x05ab", b"\x08", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x80")


class Malformed(Scenario):
    """Send bytes that are not a protobuf message (truncated fields, bad tags) to
    PlaceOrder, GetOrder and ListOrders of ``orderd-1`` with a valid token, over mTLS.

    Criteria: each answer is ``INVALID_ARGUMENT`` with a clean message; each is counted
    in ``grpc_server_handled_total{grpc_code="InvalidArgument"}`` and written to the
    access log; callers are not hurt (recovery 0-1 s from the start).
    """

    name = "malformed"
    item = "5"
    hurts = False
    recovery_bound_s = 1.0
    quick = True
    shares_stack = True

    async def inject(self, run: Run) -> None:
        for payload in _MALFORMED:  # each must really be undecodable
            try:
                order_pb2.PlaceOrderRequest.FromString(payload)
            except DecodeError:
                continue
            raise AssertionError(f"{payload!r} decodes; not a malformed message")
        port = run.admin_port("orderd-1")
        self.before = await scrape(port)
        # access lines from here on (another scenario may have run on this stack)
        self.log_from = len(log_events(run.env.log("orderd-1")))
        md = run.workload.users[0].metadata
        self.sent: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        run.start_fault()
        async with run.channel("orderd-1") as ch:
            for method in ("PlaceOrder", "GetOrder", "ListOrders"):
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
                    f"{_ORDERS}/{method}")
                for payload in _MALFORMED:
                    code, _, _ = await run.probe(method, call(payload, timeout=5, metadata=md))
                    codes[code.name] += 1
                    self.sent[method] += 1
        run.end_fault()
        run.note(f"malformed requests answered {dict(codes)}")
        if set(codes) != {"INVALID_ARGUMENT"}:
            run.problem(f"malformed requests answered {dict(codes)} (must be "
                        "INVALID_ARGUMENT)")

    async def check(self, run: Run) -> None:
        after = await scrape(run.admin_port("orderd-1"))
        for method, n in self.sent.items():
            counted = (metric(after, "grpc_server_handled_total", grpc_method=method,
                              grpc_code="InvalidArgument")
                       - metric(self.before, "grpc_server_handled_total", grpc_method=method,
                                grpc_code="InvalidArgument"))
            if counted < n:
                run.problem(f"{method}: {n} malformed calls, {counted:.0f} counted as "
                            "INVALID_ARGUMENT in grpc_server_handled_total")

        def logged_now() -> Counter[str]:
            return Counter(str(e.get("method", "")).rsplit("/", 1)[-1]
                           for e in log_events(run.env.log("orderd-1"))[self.log_from:]
                           if e.get("event") == "rpc" and e.get("side") == "server"
                           and e.get("code") == "INVALID_ARGUMENT")

        # access lines are flushed within 0.2 s: waited for until all are there (2 s)
        give_up = time.monotonic() + 2.0
        logged = logged_now()
        while any(logged[m] < n for m, n in self.sent.items()) \
                and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
            logged = logged_now()
        for method, n in self.sent.items():
            if logged[method] < n:
                run.problem(f"{method}: {n} malformed calls, {logged[method]} in the "
                            "access log")


# -- 6 ------------------------------------------------------------------------------------
class Flood(Scenario):
    """200 concurrent PlaceOrder requests of 3.9 MB each (a huge SKU; under the 4 MiB
    message limit) to ``orderd-1``, over mTLS with a valid token.

    Criteria: ``orderd-1``'s peak resident memory (VmHWM) grows by at most 256 MiB over
    its resident memory before the flood (the flood offers 780 MB); at least one flood
    call is shed with ``RESOURCE_EXHAUSTED``; the shared ones, with recovery within 5 s
    of the flood's end. Reported: resident memory 2 s after the flood.
    """

    name = "flood"
    item = "6"
    peak_growth_mib = 256.0
    concurrent = 200
    size = 3_900_000

    async def inject(self, run: Run) -> None:
        user = run.workload.users[0]
        pid = run.env.stack.pid("orderd-1")
        self.pid = pid
        base = memory(pid)
        request = order_pb2.PlaceOrderRequest(
            user_id=user.user_id, currency="EUR", idempotency_key=uuid.uuid4().hex,
            items=[order_pb2.OrderItem(sku="X" * self.size, quantity=1, unit_price_minor=1)],
        ).SerializeToString()
        codes: Counter[str] = Counter()
        run.start_fault()
        async with run.channel("orderd-1") as ch:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
                f"{_ORDERS}/PlaceOrder")
            results = await asyncio.gather(*(
                run.probe("PlaceOrder", call(request, timeout=30, metadata=user.metadata))
                for _ in range(self.concurrent)))
        run.end_fault()
        for code, _, _ in results:
            codes[code.name] += 1
        peak = memory(pid).peak_mib
        run.note(f"flood answered {dict(codes)}")
        run.note(f"orderd-1 RSS {base.rss_mib:.0f} MiB before, peak {peak:.0f} MiB")
        if peak - base.rss_mib > self.peak_growth_mib:
            run.problem(f"orderd-1 peak memory grew {peak - base.rss_mib:.0f} MiB under the "
                        f"flood (at most {self.peak_growth_mib:.0f})")
        if not codes.get("RESOURCE_EXHAUSTED"):
            run.problem("no flood call was shed with RESOURCE_EXHAUSTED")

    async def check(self, run: Run) -> None:
        run.note(f"orderd-1 RSS after the flood {memory(self.pid).rss_mib:.0f} MiB")


class IdleStreams(Scenario):
    """Open 50 calls to ``orderd-1`` over 5 connections that send their headers and then
    nothing (no message, no end of stream), half with a valid token, half without.

    Criteria: the server ends every one of them within 30 s (any status); callers are
    not hurt meanwhile (recovery 0-1 s from the start).
    """

    name = "idle-streams"
    item = "6"
    hurts = False
    recovery_bound_s = 1.0
    streams = 50
    connections = 5
    bound_s = 30.0

    async def inject(self, run: Run) -> None:
        md = run.workload.users[0].metadata
        run.start_fault()
        async with contextlib.AsyncExitStack() as stack:
            # over several connections, as an attacker would: a per-connection stream cap
            # (ServerLimits.max_concurrent_streams) must not be what hides the fault
            channels = [await stack.enter_async_context(run.channel("orderd-1"))
                        for _ in range(self.connections)]
            opens: list[grpc.aio.StreamStreamMultiCallable[bytes, bytes]] = [
                ch.stream_stream(f"{_ORDERS}/PlaceOrder") for ch in channels]
            calls = [opens[i % self.connections](metadata=md if i % 2 else None)
                     for i in range(self.streams)]
            await asyncio.wait_for(asyncio.gather(*(c.wait_for_connection() for c in calls)),
                                   10)
            ends = [asyncio.ensure_future(c.code()) for c in calls]
            t0 = time.monotonic()
            done, pending = await asyncio.wait(ends, timeout=self.bound_s)
            took = time.monotonic() - t0
            for c in calls:
                c.cancel()
            await asyncio.gather(*ends, return_exceptions=True)
        run.end_fault()
        codes = Counter(f.result().name for f in done if not f.cancelled())
        run.note(f"{len(done)} of {self.streams} header-only streams ended by the server "
                 f"within {took:.0f} s: {dict(codes)}")
        if pending:
            run.problem(f"{len(pending)} of {self.streams} header-only streams still open "
                        f"after {self.bound_s:.0f} s")


# -- 7 ------------------------------------------------------------------------------------
class HugeDeadline(Scenario):
    """PlaceOrder with ``grpc-timeout: 9999999H`` and with ``99999999H`` (the longest legal
    values) straight to ``orderd-1`` (raw HTTP/2; grpcio cannot send them), then GetOrder
    of the order with the same header. PlaceOrder calls the user service, so the deadline
    is propagated to the next hop.

    Criteria: every call succeeds (``grpc-status: 0``), the orders are acknowledged and
    stored; the shared ones with recovery 0-1 s from the start.
    """

    name = "huge-deadline"
    item = "7"
    hurts = False
    recovery_bound_s = 1.0
    quick = True
    shares_stack = True

    async def inject(self, run: Run) -> None:
        user = run.workload.users[0]
        host, port = run.address("orderd-1")
        server_name = f"orderd.svc.{TRUST_DOMAIN}"
        tls = run.ssl_context()
        run.start_fault()
        for timeout in ("9999999H", "99999999H"):
            key = uuid.uuid4().hex
            req = order_pb2.PlaceOrderRequest(
                user_id=user.user_id, currency="EUR", idempotency_key=key,
                items=[order_pb2.OrderItem(sku="LONG-1", quantity=1, unit_price_minor=100)])
            headers = [("grpc-timeout", timeout), ("authorization", f"Bearer {user.token}")]
            status, message, order = await self._call(
                run, "PlaceOrder", host, port, tls, server_name, req.SerializeToString(),
                headers, order_pb2.Order)
            if status != 0 or order is None:
                run.problem(f"PlaceOrder with grpc-timeout {timeout}: status {status} "
                            f"{message!r}")
                continue
            run.workload.acked[key] = order.id
            status, message, _ = await self._call(
                run, "GetOrder", host, port, tls, server_name,
                order_pb2.GetOrderRequest(order_id=order.id).SerializeToString(), headers,
                order_pb2.Order)
            if status != 0:
                run.problem(f"GetOrder with grpc-timeout {timeout}: status {status} "
                            f"{message!r}")
        run.end_fault()

    @staticmethod
    async def _call(run: Run, method: str, host: str, port: int, tls: object,
                    server_name: str, request: bytes, headers: list[tuple[str, str]],
                    reply_type: type[order_pb2.Order]
                    ) -> tuple[int | None, str, order_pb2.Order | None]:
        t0 = time.monotonic()
        reply = await unary_call(host, port, tls=tls, server_name=server_name,  # type: ignore[arg-type]
                                 path=f"{_ORDERS}/{method}", request=request, headers=headers)
        status = reply.status
        code = grpc.StatusCode.UNKNOWN
        for c in grpc.StatusCode:
            if c.value[0] == status:
                code = c
        run.probes.append(Call(method, code, reply.message, t0, time.monotonic()))
        msg = reply_type.FromString(reply.messages[0]) if reply.messages else None
        return status, reply.message, msg


# -- 8 ------------------------------------------------------------------------------------
class Identity(Scenario):
    """Call the user service with certificates the mesh must refuse: (a) a leaf for the
    ``orderd`` identity issued by a sub-CA that the mesh CA (``pathlen:0``) signed, calling
    GetUser, which only orderd may call; (b) a leaf from the mesh CA whose SPIFFE ID has
    extra segments (``spiffe://meshkit.local/svc/edge/extra``), calling CreateUser, which
    any workload may call. Controls: the same calls with the stack's real ``edge`` and
    ``orderd`` certificates reach the handler (OK, NOT_FOUND for an unknown user).

    Criteria: both are refused (``UNAVAILABLE`` from a failed handshake,
    ``UNAUTHENTICATED`` or ``PERMISSION_DENIED``; never an answer from the handler); the
    controls get their answers; callers are not hurt.
    """

    name = "identity"
    item = "8"
    hurts = False
    recovery_bound_s = 1.0
    quick = True
    shares_stack = True
    refused = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED,
               grpc.StatusCode.PERMISSION_DENIED)

    async def inject(self, run: Run) -> None:
        cert_dir = run.env.cert_dir
        sub = sub_ca_workload(cert_dir, "orderd", TRUST_DOMAIN)
        odd = odd_id_workload(cert_dir, f"spiffe://{TRUST_DOMAIN}/svc/edge/extra")
        run.start_fault()

        def create() -> user_pb2.CreateUserRequest:
            email = f"id-{uuid.uuid4().hex[:10]}@example.com"
            return user_pb2.CreateUserRequest(email=email, name="Id", password="pw-identity-1")

        controls = (
            ("edge", "CreateUser", create().SerializeToString(), grpc.StatusCode.OK),
            ("orderd", "GetUser", user_pb2.GetUserRequest(
                user_id=str(uuid.uuid4())).SerializeToString(), grpc.StatusCode.NOT_FOUND),
        )
        for name, method, request, expected in controls:
            async with run.channel("userd-1", cert=run.pem(name)) as ch:
                code, msg, _ = await run.probe(
                    method, ch.unary_unary(f"{_USERS}/{method}")(request, timeout=5))
            if code is not expected:
                run.problem(f"control: {method} with the real {name} certificate got "
                            f"{code.name} {msg!r} (expected {expected.name})")
        cases = (
            ("sub-CA-issued orderd certificate, GetUser", sub, "GetUser",
             user_pb2.GetUserRequest(user_id=str(uuid.uuid4())).SerializeToString()),
            ("SPIFFE ID with extra path segments, CreateUser", odd, "CreateUser",
             create().SerializeToString()),
        )
        for label, cert, method, request in cases:
            async with run.channel("userd-1", cert=cert) as ch:
                code, msg, _ = await run.probe(
                    method, ch.unary_unary(f"{_USERS}/{method}")(request, timeout=5),
                    check_message=False)
            run.note(f"{label}: {code.name}")
            if code not in self.refused:
                run.problem(f"{label}: accepted ({code.name} {msg[:80]!r}); must be refused")
        run.end_fault()


# -- 9 ------------------------------------------------------------------------------------
class RegistryUnreadable(Scenario):
    """Make the registry file unreadable (``chmod 000``) for 3 / 6 s; meanwhile a new
    client (a fresh registry and ``dial``) calls GetOrder. Processes already running keep
    their open file.

    Criteria: the new client gets ``UNAVAILABLE`` whose message names the registry
    problem (it says "registry", and not "no endpoint is registered") without the file's
    path; the running callers are not hurt (recovery 0-1 s from the chmod).
    """

    name = "registry-unreadable"
    item = "9"
    hurts = False
    recovery_bound_s = 1.0
    quick = True
    shares_stack = True  # the modes are restored at the fault's end

    async def inject(self, run: Run) -> None:
        env = run.env
        run.start_fault()
        started = time.monotonic()
        env.chmod(env.registry_file, 0o000)
        registry = LocalRegistry(LocalOptions(path=env.registry_dir, ttl_s=env.spec.ttl_s,
                                              busy_timeout_s=1.0))
        opts = dataclasses.replace(mesh.ORDERS, tls=edge_tls(env.cert_dir),
                                   resolve_timeout_s=2.0)
        try:
            async with meshkit.dial("orderd", registry=registry, options=opts) as ch:
                call = ch.unary_unary(f"{_ORDERS}/GetOrder",
                                      request_serializer=order_pb2.GetOrderRequest
                                      .SerializeToString)
                code, msg, _ = await run.probe("GetOrder", call(
                    order_pb2.GetOrderRequest(order_id=str(uuid.uuid4())), timeout=5,
                    metadata=run.workload.users[0].metadata))
        finally:
            await registry.close()
        run.note(f"new client with an unreadable registry: {code.name} {msg[:100]!r}")
        if code is not grpc.StatusCode.UNAVAILABLE or "registry" not in msg.lower() \
                or "no endpoint is registered" in msg:
            run.problem(f"new client got {code.name} {msg[:100]!r}; must be UNAVAILABLE "
                        "naming the registry error")
        await asyncio.sleep(max(0.0, (3.0 if run.quick else 6.0) - (time.monotonic() - started)))
        env.restore_modes()
        run.end_fault()


class RedisHang(Scenario):
    """Order services keep rate-limit counts in Redis (``async+redis://``) through a TCP
    proxy; make it hang (connections accepted, nothing answered) for 5 / 10 s, then let it
    answer again.

    Criteria: a burst of 30 ListOrders by one user is limited before the hang (control:
    the limit is global, in Redis); callers are not hurt (limiter fails open) and, from
    2 s into the hang on, the median PlaceOrder latency (a rate-limited method) is within
    100 ms of its pre-fault median (a breaker opened after a few storage timeouts instead
    of every call waiting the full 250 ms storage timeout); within 10 s after the hang a
    burst is limited again (the breaker probed and closed).
    """

    name = "redis-hang"
    item = "9"
    spec = StackSpec(redis=True)
    hurts = False
    recovery_bound_s = 1.0
    burst = 30

    async def _limited(self, run: Run, md: tuple[tuple[str, str], ...], user_id: str) -> int:
        stub = run.workload.orders_stub
        results = await asyncio.gather(*(run.probe("ListOrders", stub.ListOrders(
            order_pb2.ListOrdersRequest(user_id=user_id, page_size=1), timeout=5,
            metadata=md)) for _ in range(self.burst)))
        return sum(1 for code, _, _ in results if code is grpc.StatusCode.RESOURCE_EXHAUSTED)

    async def inject(self, run: Run) -> None:
        proxy = run.env.redis_proxy
        assert proxy is not None
        user = await run.workload.sign_up()
        n = await self._limited(run, user.metadata, user.user_id)
        run.note(f"burst before the hang: {n} of {self.burst} limited")
        if n == 0:
            run.problem("control: a burst was not limited before the hang (Redis limit off?)")
        run.start_fault()
        proxy.blackhole()
        await asyncio.sleep(5.0 if run.quick else 10.0)
        await proxy.start()
        run.end_fault()

        async def limited_again() -> bool:
            await asyncio.sleep(1.0)  # a fresh window for the user's count
            return await self._limited(run, user.metadata, user.user_id) > 0

        took = await _poll(limited_again, 10.0, interval_s=0.0)
        if took is None:
            run.problem("rate limit not enforced again within 10 s after the hang")
        else:
            run.note(f"limit enforced again within {took:.1f} s after the hang")

    async def check(self, run: Run) -> None:
        calls = [c for c in run.workload.calls if c.method == "PlaceOrder"]
        pre = [c.end - c.start for c in calls if c.end < run.fault_start]
        late = [c.end - c.start for c in calls
                if c.start >= run.fault_start + 2.0 and c.end <= run.fault_end]
        run.note(f"PlaceOrder median {p50(pre) * 1000:.0f} ms before, "
                 f"{p50(late) * 1000:.0f} ms from 2 s into the hang")
        if not late or p50(late) > p50(pre) + 0.1:
            run.problem(f"calls kept waiting on the hung Redis: PlaceOrder median "
                        f"{p50(late) * 1000:.0f} ms vs {p50(pre) * 1000:.0f} ms before")


ALL: tuple[type[Scenario], ...] = (
    SigStop, RegistryReadOnly, RegistryDeleted, DatabaseDown, Malformed, Flood, IdleStreams,
    HugeDeadline, Identity, RegistryUnreadable, RedisHang,
)
"""Every scenario, in the order ``make chaos`` runs them."""

BY_NAME = {s.name: s for s in ALL}
