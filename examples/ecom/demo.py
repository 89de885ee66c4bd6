"""The ecom demo: the stack on real processes, a workload through dial(), a SIGKILL midway.

``meshkit demo`` (or ``make demo``) starts 2 user-service and 2 order-service processes,
each on its own port and registered in a fresh local registry, runs a workload of real
calls through :func:`meshkit.dial` (create users, authenticate, place and read back orders),
kills one order-service instance with SIGKILL halfway through, verifies the stored orders
through ListOrders, prints a report and exits 0 only if every call succeeded except those
that were on the killed instance. Every process it started is stopped, and a temporary
workdir removed, on exit, Ctrl-C (status 130) and SIGTERM (status 143).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

import meshkit
from examples.ecom import demo_events, events, mesh, security
from examples.ecom._child import signal_child
from examples.ecom._process import seconds_arg
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc
from meshkit.auth import (
    AuthError,
    CertificateError,
    TLSOptions,
    describe_certificate,
    init_ca_dir,
    issue_into_dir,
    load_certificate,
)
from meshkit.errors import ConfigError
from meshkit.interceptors import ClientCallDetails, ClientInterceptor
from meshkit.observability import (
    JsonLinesSpanExporter,
    configure_logging,
    configure_tracing,
    load_spans,
    render_trace,
)

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"userd": "examples.ecom.user_service", "orderd": "examples.ecom.order_service",
            "summaryd": "examples.ecom.projection_service"}

#: How long :meth:`Stack.stop_all` waits, seconds, for the processes it sent SIGTERM to
#: before it SIGKILLs those left (Kubernetes' default ``terminationGracePeriodSeconds``).
#: A service drains within its own bound (``--drain-delay-s`` 0.5 s + ``--grace-s`` 5 s)
#: and then exits: on a loaded box (load ~19 on 2 cores) the five services drained in
#: 0.6 s but took 6.5-7.1 s from SIGTERM to exit, and the 10 s bound of before SIGKILLed
#: all five at a load of ~24. The wait ends as soon as every process exited.
STOP_GRACE_S = 30.0


# -- what happened -----------------------------------------------------------------------
@dataclass
class CallRecord:
    """One finished call as seen by the demo client."""

    service: str
    method: str
    code: grpc.StatusCode
    latency_s: float
    instance: str | None
    phase: str


@dataclass
class Journal:
    """Every call of the run, and the phase being recorded."""

    calls: list[CallRecord] = field(default_factory=list)
    phase: str = "workload"

    def count(self, phase: str = "workload") -> int:
        """Calls recorded in ``phase``."""
        return sum(1 for c in self.calls if c.phase == phase)


class Recorder(ClientInterceptor):
    """A per-call interceptor noting method, status, latency and the serving instance."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await proceed(details, request)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise
        finally:
            last = details.attempts[-1].key if details.attempts else None
            self.journal.calls.append(CallRecord(
                details.service, details.method.rsplit("/", 1)[-1], code,
                time.perf_counter() - t0, last, self.journal.phase))


# -- processes ---------------------------------------------------------------------------
@dataclass
class Proc:
    """A service process the demo started."""

    service: str
    instance_id: str
    proc: asyncio.subprocess.Process
    log: Path
    address: str = ""
    killed: bool = False


def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc`` unless asyncio reported it done, with
    :func:`examples.ecom._child.signal_child`: not ``Process.terminate()``/``kill()``,
    i.e. ``Popen.send_signal``, whose ``poll()`` (``waitpid(WNOHANG)``) reaps a child
    that exited and that asyncio's child watcher has not read yet: the watcher then
    finds none and reports 255 ("exit status already read" with the pidfd watcher,
    Python 3.12's default; "Unknown child process pid" with the threaded one), and the
    demo printed 255 for a service that exited on its own; nor a bare ``os.kill``,
    which signals whichever process has the pid once the watcher reaped the child but
    before the loop set ``returncode``. ``signal_child`` reaps nothing and signals this
    child only while it is not reaped (through a pidfd). A process gone already is no
    error."""
    if proc.returncode is None:
        signal_child(proc.pid, sig)


class StartError(RuntimeError):
    """A service process of the stack exited or did not report READY in time; the
    message names it and quotes the end of its log."""


class Stack:
    """Starts, kills and stops the service processes; every one is stopped on exit."""

    def __init__(self, workdir: Path, registry_uri: str, database_url: str | None,
                 cert_dir: Path | None = None) -> None:
        """``cert_dir``: a ``meshkit certs`` directory (mTLS); ``None`` runs plaintext."""
        self.workdir = workdir
        self.registry_uri = registry_uri
        self.database_url = database_url
        self.cert_dir = cert_dir
        self.procs: dict[str, Proc] = {}
        self._pumps: list[asyncio.Task[None]] = []

    async def start(self, service: str, instance_id: str, timeout_s: float = 30.0) -> Proc:
        """Start one instance and wait for its READY line."""
        db = self.database_url or f"sqlite:///{self.workdir / (service + '.db')}"
        # by environment, not --db: a PostgreSQL URL's password on a command line is
        # anyone's to read (ps, /proc/PID/cmdline) for as long as the stack runs
        env = {**os.environ, "MESHKIT_REGISTRY": self.registry_uri, "PYTHONUNBUFFERED": "1",
               "MESHKIT_TRACE_FILE": str(self.workdir / "traces" / f"{instance_id}.jsonl"),
               "DATABASE_URL": db, **demo_events.service_env()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        security = (["--cert-dir", str(self.cert_dir)] if self.cert_dir is not None
                    else ["--insecure", "--jwt-dir", str(self.workdir / "jwt")])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", SERVICES[service], "--instance-id", instance_id,
            *security, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        p = Proc(service, instance_id, proc, self.workdir / f"{instance_id}.log")
        self.procs[instance_id] = p
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # read here if this start was cancelled (the demo stopped meanwhile): no "Future
        # exception was never retrieved" for a process that exited before READY
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pumps.append(asyncio.create_task(self._pump(p, ready)))
        try:
            p.address = await asyncio.wait_for(asyncio.shield(ready), timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            tail = p.log.read_text(errors="replace").splitlines()[-8:] if p.log.exists() else []
            raise StartError(f"{instance_id} did not start; {p.log} ends with:\n"
                             + "\n".join(tail)) from exc
        return p

    async def _pump(self, p: Proc, ready: asyncio.Future[str]) -> None:
        assert p.proc.stdout is not None
        with p.log.open("wb") as out:
            async for line in p.proc.stdout:
                out.write(line)
                out.flush()
                if line.startswith(b"READY ") and not ready.done():
                    ready.set_result(line.split()[2].decode())
        if not ready.done():
            ready.set_exception(RuntimeError("exited before READY"))

    def crashed(self, tail_lines: int = 8) -> dict[str, tuple[int, list[str]]]:
        """Instances that exited without being killed or stopped: id -> (exit code, the
        last ``tail_lines`` lines of their log)."""
        out = {}
        for iid, p in sorted(self.procs.items()):
            if p.killed or p.proc.returncode is None:
                continue
            log = p.log.read_text(errors="replace").splitlines() if p.log.exists() else []
            out[iid] = (p.proc.returncode, log[-tail_lines:])
        return out

    def kill(self, instance_id: str) -> int:
        """SIGKILL one instance; returns its pid."""
        p = self.procs[instance_id]
        _signal(p.proc, signal.SIGKILL)
        p.killed = True
        return p.proc.pid

    async def stop_all(self, grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
        """SIGTERM every live process, wait up to ``grace_s`` seconds (default
        :data:`STOP_GRACE_S`, 30 s; the wait ends when every process exited), SIGKILL
        leftovers; returns each instance's exit status (negative: the signal that ended
        it)."""
        for p in self.procs.values():
            _signal(p.proc, signal.SIGTERM)
        waits = [p.proc.wait() for p in self.procs.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace_s)
        except TimeoutError:
            for p in self.procs.values():
                _signal(p.proc, signal.SIGKILL)
            await asyncio.gather(*(p.proc.wait() for p in self.procs.values()))
        for t in self._pumps:
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        return {k: p.proc.returncode for k, p in self.procs.items()}


# -- workload ----------------------------------------------------------------------------
@dataclass
class Workload:
    """State of the workload: users made, orders acknowledged, calls budget.

    ``mark`` is set when ``mark_at`` calls have been started (the demo kills an instance
    then).
    """

    budget: int
    tokens: dict[str, str] = field(default_factory=dict)  # user id -> access token
    owners: dict[str, str] = field(default_factory=dict)  # order id -> user id
    mark_at: int = 0
    mark: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    users: list[str] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # idempotency key -> order id

    def take(self, calls: int = 1) -> bool:
        """Reserve ``calls`` calls from the budget together (a new user's CreateUser and
        Authenticate: 2), or none when fewer are left."""
        if self.started + calls > self.budget:
            return False
        self.started += calls
        if self.started >= self.mark_at:
            self.mark.set()
        return True

    def give_back(self, calls: int = 1) -> None:
        """Return ``calls`` reserved calls that will not be made (a failed CreateUser's
        Authenticate) to the budget."""
        self.started -= calls


async def run_workload(users: user_pb2_grpc.UserServiceStub,
                       orders: order_pb2_grpc.OrderServiceStub, w: Workload,
                       concurrency: int, timeout_s: float) -> None:
    """Workers create users, authenticate, then place/read/list orders until the budget."""

    async def worker(n: int) -> None:
        i = 0
        user_id: str | None = None
        md: tuple[tuple[str, str], ...] = ()
        while w.take(1 if user_id is not None else 2):  # a new user: sign-up and login
            i += 1
            try:
                if user_id is None:
                    email = f"user{n}-{uuid.uuid4().hex[:8]}@example.com"
                    try:
                        u = await users.CreateUser(user_pb2.CreateUserRequest(
                            email=email, name=f"User {n}", password=f"pw-{email}"),
                            timeout=timeout_s)
                    except grpc.aio.AioRpcError:
                        w.give_back()  # its login, reserved with it, is not made
                        raise
                    session = await users.Authenticate(user_pb2.AuthenticateRequest(
                        email=email, password=f"pw-{email}"), timeout=timeout_s)
                    user_id = u.id
                    w.users.append(u.id)
                    w.tokens[u.id] = session.token
                    md = (("authorization", f"Bearer {session.token}"),)
                    continue
                key = uuid.uuid4().hex
                order = await orders.PlaceOrder(order_pb2.PlaceOrderRequest(
                    user_id=user_id, currency="EUR", idempotency_key=key,
                    items=[order_pb2.OrderItem(sku=f"SKU-{i % 7}", quantity=1 + i % 3,
                                               unit_price_minor=199 + 100 * (i % 5))]),
                    timeout=timeout_s, metadata=md)
                w.acked[key] = order.id
                w.owners[order.id] = user_id
                if w.take():
                    await orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.id),
                                          timeout=timeout_s, metadata=md)
                if i % 4 == 0 and w.take():
                    await orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user_id,
                                                                        page_size=10),
                                            timeout=timeout_s, metadata=md)
            except grpc.aio.AioRpcError:
                continue  # recorded by the interceptor; judged in the report

    await asyncio.gather(*(worker(n) for n in range(concurrency)))


async def verify_orders(orders: order_pb2_grpc.OrderServiceStub, w: Workload,
                        timeout_s: float) -> tuple[int, int, int]:
    """Read back every order of the run's users: (stored, lost acked, duplicated keys)."""
    keys: Counter[str] = Counter()
    ids: set[str] = set()
    for user_id in w.users:
        token = ""
        while True:
            page = await orders.ListOrders(order_pb2.ListOrdersRequest(
                user_id=user_id, page_size=100, page_token=token), timeout=timeout_s,
                metadata=(("authorization", f"Bearer {w.tokens[user_id]}"),))
            for o in page.orders:
                ids.add(o.id)
                keys[o.idempotency_key] += 1
            token = page.next_page_token
            if not token:
                break
    lost = sum(1 for oid in w.acked.values() if oid not in ids)
    dups = sum(1 for n in keys.values() if n > 1)
    return len(ids), lost, dups


# -- security probes -----------------------------------------------------------------------
@dataclass
class Probe:
    """One call that must be refused, with the status it must get."""

    name: str
    expected: grpc.StatusCode
    got: grpc.StatusCode | None = None

    @property
    def ok(self) -> bool:
        """Whether the call was refused as expected."""
        return self.got is self.expected


async def run_probes(users: user_pb2_grpc.UserServiceStub,
                     orders: order_pb2_grpc.OrderServiceStub, w: Workload, stack: Stack,
                     timeout_s: float) -> list[Probe]:
    """Calls the mesh must refuse: wrong peer, no/forged/foreign token, plaintext.

    Needs two users with an order each; with a workload too small for that, no probe runs.
    """
    with_orders = list(dict.fromkeys(w.owners.values()))
    if len(with_orders) < 2:
        return []
    a, b = with_orders[0], with_orders[1]
    token_a = w.tokens[a]
    bearer_a = (("authorization", f"Bearer {token_a}"),)
    head, payload, sig = token_a.split(".")
    forged = f"{head}.{payload[:-4]}AAAA.{sig}"
    order_a = next(o for o, u in w.owners.items() if u == a)
    order_b = next(o for o, u in w.owners.items() if u == b)
    item = [order_pb2.OrderItem(sku="PROBE-1", quantity=1, unit_price_minor=1)]
    probes: list[tuple[Probe, Any]] = [
        (Probe("PlaceOrder without a token", grpc.StatusCode.UNAUTHENTICATED),
         orders.PlaceOrder(order_pb2.PlaceOrderRequest(user_id=a, currency="EUR", items=item),
                           timeout=timeout_s)),
        (Probe("PlaceOrder with a tampered token", grpc.StatusCode.UNAUTHENTICATED),
         orders.PlaceOrder(order_pb2.PlaceOrderRequest(user_id=a, currency="EUR", items=item),
                           timeout=timeout_s,
                           metadata=(("authorization", f"Bearer {forged}"),))),
        (Probe("PlaceOrder for another user with one's own token",
               grpc.StatusCode.PERMISSION_DENIED),
         orders.PlaceOrder(order_pb2.PlaceOrderRequest(user_id=b, currency="EUR", items=item),
                           timeout=timeout_s, metadata=bearer_a)),
        (Probe("GetOrder of another user's order (not revealed)", grpc.StatusCode.NOT_FOUND),
         orders.GetOrder(order_pb2.GetOrderRequest(order_id=order_b), timeout=timeout_s,
                         metadata=bearer_a)),
    ]
    if stack.cert_dir is not None:
        probes.insert(0, (Probe("edge workload calls UserService.GetUser (only orderd may)",
                                grpc.StatusCode.PERMISSION_DENIED),
                          users.GetUser(user_pb2.GetUserRequest(user_id=a), timeout=timeout_s)))
    out: list[Probe] = []
    for probe, call in probes:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            probe.got = exc.code()
        else:
            probe.got = grpc.StatusCode.OK
        out.append(probe)
    # A burst over the per-user ListOrders limit (20/s per replica) is shed with a
    # retry-after; RESOURCE_EXHAUSTED is not retried by the client's default policy.
    burst = Probe("burst of 60 ListOrders by one user (limit 20/s)",
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
    results = await asyncio.gather(*(orders.ListOrders(
        order_pb2.ListOrdersRequest(user_id=a, page_size=1), timeout=timeout_s,
        metadata=bearer_a) for _ in range(60)), return_exceptions=True)
    shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)
            and r.code() is grpc.StatusCode.RESOURCE_EXHAUSTED]
    burst.got = grpc.StatusCode.RESOURCE_EXHAUSTED if shed else grpc.StatusCode.OK
    if shed:
        after = dict(shed[0].trailing_metadata() or ()).get("retry-after", "?")
        burst.name += f": {len(shed)} shed, retry-after {after}s"
    out.append(burst)
    if stack.cert_dir is not None:
        address = next(p.address for p in stack.procs.values()
                       if p.service == "orderd" and not p.killed)
        probe = Probe("plaintext client against an mTLS server", grpc.StatusCode.UNAVAILABLE)
        async with grpc.aio.insecure_channel(address) as plain:
            try:
                await order_pb2_grpc.OrderServiceStub(plain).GetOrder(
                    order_pb2.GetOrderRequest(order_id=order_a), timeout=timeout_s,
                    metadata=bearer_a)
                probe.got = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                probe.got = exc.code()
        out.append(probe)
    return out


def print_security(stack: Stack, probes: list[Probe], w: Workload,
                   journal: Journal) -> bool:
    """Print the security section; ``True`` when every probe was refused as expected."""
    print("")
    if stack.cert_dir is None:
        print("Security: PLAINTEXT (--insecure): no mTLS; JWTs still required by orderd")
    else:
        print("Security: mTLS on every hop, workload identities (SPIFFE IDs):")
        for name in ("userd", "orderd", security.EDGE):
            info = describe_certificate(load_certificate(stack.cert_dir / f"{name}.pem"))
            print(f"  {name:<8} {info.spiffe_id}  (certificate valid until "
                  f"{info.not_after:%H:%M} UTC)")
    order_calls = sum(1 for c in journal.calls
                      if c.service == "orderd" and c.code is grpc.StatusCode.OK)
    print(f"  JWTs: {len(w.tokens)} issued by Authenticate (ES256, JWKS via the registry); "
          f"{order_calls} order calls carried a verified token")
    print("  Refused as they must be:" + ("" if probes else " (workload too small to probe)"))
    for p in probes:
        mark = "ok " if p.ok else "BAD"
        got = p.got.name if p.got is not None else "-"
        print(f"    [{mark}] {p.name}: {got} (expected {p.expected.name})")
    return all(p.ok for p in probes)


# -- report ------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank, in the values' unit."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))] if s else 0.0


def report(journal: Journal, stack: Stack, killed: str | None, verify: tuple[int, int, int],
           w: Workload, elapsed_s: float) -> int:
    """Print the run's report; return the exit code (0 only if nothing but the killed
    instance's calls failed)."""
    calls = [c for c in journal.calls if c.phase == "workload"]
    out = print
    out("")
    out(f"Workload: {len(calls)} calls in {elapsed_s:.2f} s "
        f"({len(calls) / elapsed_s:.0f} calls/s)")
    out(f"  {'method':<28}{'ok':>6}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}")
    by_method: dict[str, list[CallRecord]] = defaultdict(list)
    for c in calls:
        by_method[f"{c.service} {c.method}"].append(c)
    for name in sorted(by_method):
        cs = by_method[name]
        lat = [c.latency_s * 1000 for c in cs]
        ok = sum(c.code is grpc.StatusCode.OK for c in cs)
        out(f"  {name:<28}{ok:>6}{len(cs) - ok:>8}{pct(lat, .5):>9.2f}{pct(lat, .99):>9.2f}")
    lat_all = [c.latency_s * 1000 for c in calls]
    out(f"  {'all':<28}{'':>14}{pct(lat_all, .5):>9.2f}{pct(lat_all, .99):>9.2f}")

    failed = [c for c in journal.calls
              if c.code is not grpc.StatusCode.OK and c.phase != "probes"]
    on_killed = [c for c in failed if killed is not None and c.instance == killed]
    other = [c for c in failed if c not in on_killed]
    out("")
    out("Errors by status code:" + ("  none" if not failed else ""))
    for code, n in Counter(c.code.name for c in failed).most_common():
        out(f"  {code:<20}{n:>5}")
    if killed and failed:
        out(f"  of which on the killed instance {killed}: {len(on_killed)} "
            "(in flight or sent before its connection was seen to drop)")

    out("")
    out("Calls served by instance (as picked by the demo client's balancer):")
    served = Counter(c.instance for c in calls if c.instance)
    for iid, p in sorted(stack.procs.items()):
        note = "  <- SIGKILLed" if p.killed else ""
        out(f"  {iid:<12}{p.address:<22}{served.get(iid, 0):>6} calls{note}")

    stored, lost, dups = verify
    out("")
    out(f"Orders: {len(w.acked)} acknowledged, {stored} stored, {lost} acknowledged but "
        f"missing, {dups} idempotency keys stored twice")
    crashed = stack.crashed()
    for iid, (rc, tail) in crashed.items():
        out(f"  {iid} exited on its own (exit code {rc}); its log ends with:")
        for line in tail:
            out(f"    {line}")
    code = 0 if not other and lost == 0 and dups == 0 and not crashed else 1
    out("")
    if code == 0:
        extra = f" except {len(on_killed)} on the killed instance" if on_killed else ""
        out(f"Result: OK — every call succeeded{extra}.")
    else:
        out(f"Result: FAILED — {len(crashed)} instance(s) exited on their own, "
            f"{len(other)} call(s) failed off the killed instance, "
            f"{lost} acknowledged order(s) missing, {dups} duplicated.")
        for c in other[:10]:
            out(f"  {c.service} {c.method} -> {c.code.name} (instance {c.instance})")
    return code


# -- main --------------------------------------------------------------------------------
async def _create_durable() -> bool:
    """This run's projection consumer, made to start at this run
    (:func:`demo_events.create_durable`, with a second's margin for the clocks); when NATS
    cannot be reached now, ``summaryd`` makes it (from the stream's start) or reports the
    outage itself. Returns whether NATS could be reached (the events check runs only then:
    ``make demo`` needs no NATS, README "Two commands")."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    try:
        nc = await demo_events.connect_once(demo_events.NATS_URL)
    except Exception:
        return False
    try:
        js = nc.jetstream(timeout=5)
        await events.ensure_order_stream(js)
        await demo_events.create_durable(js, since)
    except Exception as exc:
        print(f"  (this run's projection consumer could not be made to start now: {exc!r};"
              " summaryd replays the stream)")
    finally:
        await nc.close()
    return True


async def run(args: argparse.Namespace) -> int:
    """Run the demo as ``args`` says; returns the exit code."""
    own_dir = getattr(args, "own_workdir", False)
    # local:// takes an absolute path only (one getcwd(), not blocking I/O)
    workdir = Path(os.path.abspath(args.workdir))  # noqa: ASYNC240
    registry_uri = f"local://{workdir / 'registry'}?ttl_s={args.ttl_s}&poll_interval_s=0.1"
    cert_dir = None if args.insecure else make_certificates(workdir / "certs")
    stack = Stack(workdir, registry_uri, args.database_url, cert_dir)
    journal = Journal()
    mode = "plaintext (--insecure)" if cert_dir is None else "mTLS + JWT"
    print(f"meshkit demo: 2 userd + 2 orderd processes, {mode}, local registry in {workdir}")
    renewing = None if cert_dir is None else asyncio.create_task(renew_certificates(cert_dir))
    try:
        t0 = time.monotonic()
        nats_up = await _create_durable()
        await asyncio.gather(*(stack.start(s, f"{s}-{n}") for s in ("userd", "orderd")
                               for n in (1, 2)), stack.start("summaryd", "summaryd-1"))
        for iid, p in sorted(stack.procs.items()):
            print(f"  started {iid:<10} pid {p.proc.pid:<8} at {p.address}")
        print(f"  stack up in {time.monotonic() - t0:.2f} s")

        registry = meshkit.registry_from_uri(registry_uri)
        tracer = setup_client_tracing(workdir / "traces" / "demo.jsonl")
        rec = (Recorder(journal),)
        tls = None if cert_dir is None else edge_tls(cert_dir)
        sec = {"tls": tls, "insecure": tls is None}
        uopts = dataclasses.replace(mesh.USERS, interceptors=rec, **sec)  # type: ignore[arg-type]
        oopts = dataclasses.replace(mesh.ORDERS, interceptors=rec, **sec)  # type: ignore[arg-type]
        async with meshkit.dial("userd", registry=registry, options=uopts) as uch, \
                meshkit.dial("orderd", registry=registry, options=oopts) as och:
            await uch.wait_for_endpoints(2, timeout_s=10)
            await och.wait_for_endpoints(2, timeout_s=10)
            users = user_pb2_grpc.UserServiceStub(uch)
            orders = order_pb2_grpc.OrderServiceStub(och)
            w = Workload(budget=args.calls, mark_at=args.calls // 2)
            killed: str | None = None

            async def killer() -> None:
                nonlocal killed
                await w.mark.wait()
                killed = "orderd-2"
                pid = stack.kill(killed)
                print(f"  SIGKILL {killed} (pid {pid}) after {w.started} calls")

            print(f"Running {args.calls} calls, {args.concurrency} concurrent"
                  + ("" if args.no_kill else ", one order-service instance killed midway"))
            t1 = time.monotonic()
            kill_task = None if args.no_kill else asyncio.create_task(killer())
            await run_workload(users, orders, w, args.concurrency, args.timeout_s)
            elapsed = time.monotonic() - t1
            if kill_task is not None:
                kill_task.cancel()  # gather: a cancel of the run (SIGTERM) still ends it
                await asyncio.gather(kill_task, return_exceptions=True)
            journal.phase = "verify"
            verify = await verify_orders(orders, w, args.timeout_s)
            code = report(journal, stack, killed, verify, w, elapsed)
            if not nats_up:  # the projection cannot converge: say so, fail nothing
                demo_events.print_skipped()
            elif not await demo_events.check_projection(registry, dataclasses.replace(
                    mesh.ORDERS, **sec), orders, w.tokens, args.timeout_s,  # type: ignore[arg-type]
                    killed=killed is not None):
                code = 1
            print_retries({"userd": uch, "orderd": och})
            journal.phase = "probes"
            probes = await run_probes(users, orders, w, stack, args.timeout_s)
            if not print_security(stack, probes, w, journal):
                code = 1
                print("Result: FAILED — a call that must be refused was not.")
            tracer.force_flush()
            print_trace(workdir / "traces")
            await print_admin(registry, stack)

            if args.keep_running:
                print_how_to_call(stack, registry_uri)
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                _unblock((signal.SIGINT, signal.SIGTERM))
                await stop.wait()
        await registry.close()
        return code
    finally:
        args.cleaning_up = True  # a SIGTERM from here on lets the clean-up finish
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
        codes = await stack.stop_all()
        await demo_events.delete_durable()  # summaryd stopped: it cannot re-create it
        clean = {k: v for k, v in codes.items() if not stack.procs[k].killed}
        if all(code == 0 for code in clean.values()):
            print(f"Stopped every process (SIGTERM, drained): exit codes {clean}")
        else:  # stopped before they served (a SIGTERM during start-up), or failing
            print(f"Stopped every process (SIGTERM): exit codes {clean} (negative: "
                  "ended by that signal before serving)")
        if own_dir and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def setup_client_tracing(path: Path) -> Any:
    """Trace the demo client's calls into ``path`` (JSON lines), like the services do."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = configure_tracing("demo-client", exporters=[])
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    return provider


def print_trace(trace_dir: Path) -> None:
    """Print one PlaceOrder trace across every process, preferring one that was retried."""
    spans = load_spans(sorted(trace_dir.glob("*.jsonl")))
    roots = [s for s in spans if s.parent is None and s.name.endswith("OrderService/PlaceOrder")
             and (s.attributes or {}).get("rpc.grpc.status_code") == 0]
    if not roots:
        print("\n(no PlaceOrder trace was recorded)")
        return
    # A retried one if any; else the latest (warm: the first pays the one-off JWKS fetch).
    root = max(roots, key=lambda s: ((s.attributes or {}).get("meshkit.attempts", 1),
                                     s.start_time or 0))
    assert root.context is not None
    retried = (root.attributes or {}).get("meshkit.attempts", 1) > 1
    print("")
    print("One PlaceOrder traced across processes (W3C trace context in gRPC metadata"
          + (", one that was retried" if retried else "")
          + f"), trace {root.context.trace_id:032x}:")
    for line in render_trace(spans, trace_id=root.context.trace_id).splitlines():
        print("  " + line)


async def print_admin(registry: meshkit.Registry, stack: Stack,
                      timeout_s: float = 2.0) -> None:
    """Print each live process's admin URL and what its /readyz answers: every instance
    the stack started (``summaryd`` too, which the demo client never dials) that is not
    killed, as the registry lists it (its ``admin_port``); each registry read and each
    probe bounded by ``timeout_s`` seconds."""
    import aiohttp

    print("")
    print("Admin servers (Prometheus /metrics, /livez, /readyz, /debug/mesh):")
    listed: dict[str, meshkit.Instance] = {}
    for service in sorted({p.service for p in stack.procs.values()}):
        listed.update({i.instance_id: i for i in await _listed(registry, service, timeout_s)})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        for iid, proc in sorted(stack.procs.items()):
            inst = listed.get(iid)
            port = inst.meta.get("admin_port") if inst is not None else None
            if proc.killed or not port:
                continue
            url = f"http://127.0.0.1:{port}"
            try:
                async with http.get(url + "/readyz") as resp:
                    ready = resp.status
            except (aiohttp.ClientError, TimeoutError):
                ready = 0
            hits = await cache_hits(http, url) if proc.service == "userd" else ""
            print(f"  {iid:<10} {url}/metrics   /readyz -> {ready}{hits}")


async def _listed(registry: meshkit.Registry, service: str,
                  timeout_s: float) -> frozenset[meshkit.Instance]:
    """The instances ``registry`` lists for ``service`` now (its watch's first set;
    none when it does not answer within ``timeout_s`` seconds)."""
    watch = registry.watch(service)
    try:
        async with asyncio.timeout(timeout_s):
            return await anext(aiter(watch))
    except (TimeoutError, StopAsyncIteration):
        return frozenset()
    finally:
        with contextlib.suppress(Exception):
            await watch.aclose()  # type: ignore[attr-defined]


async def cache_hits(http: Any, url: str) -> str:
    """``"   GetUser cache hits H/N"`` from a userd's /metrics ("" without a cache)."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return ""
    n = {s.labels["result"]: s.value for f in text_string_to_metric_families(text)
         if f.name == "ecom_user_cache_requests" for s in f.samples if s.name.endswith("_total")}
    return f"   GetUser cache hits {n.get('hit', 0):.0f}/{sum(n.values()):.0f}" if n else ""


#: Life of the workload certificates the demo issues (hours); :func:`renew_certificates`
#: issues them anew at half of it, so a stack left running (``--keep-running``) goes on
#: answering past it.
CERT_TTL_H = 2.0

#: The workloads the demo issues certificates for.
_WORKLOADS = ("userd", "orderd", "summaryd", security.EDGE)


def _issue_workloads(cert_dir: Path) -> None:
    for name in _WORKLOADS:
        issue_into_dir(cert_dir, name, ttl_h=CERT_TTL_H, dns=("localhost",),
                       ips=("127.0.0.1",), overwrite=True)


def make_certificates(cert_dir: Path) -> Path:
    """A mesh CA in ``cert_dir`` and fresh (:data:`CERT_TTL_H`, 2 h) workload certificates
    for userd, orderd, summaryd and the demo client. A CA already there (an earlier run's
    ``--workdir``) is kept when it is a readable meshkit CA of the demo's trust domain,
    with its key, that outlives those certificates; otherwise, with no CA there, a new one
    (1 day) is made.

    Raises:
        SystemExit: ``cert_dir`` holds a CA the demo cannot use (unreadable, no key,
            another trust domain, expiring): the message says why and what to do.
    """
    try:
        if not (cert_dir / "ca.key").exists() and not (cert_dir / "ca.pem").exists():
            init_ca_dir(cert_dir, trust_domain=security.TRUST_DOMAIN, ttl_days=1)
        else:
            uris = describe_certificate(load_certificate(cert_dir / "ca.pem")).uris
            if f"spiffe://{security.TRUST_DOMAIN}" not in uris:
                raise CertificateError(f"its CA is not of the trust domain "
                                       f"{security.TRUST_DOMAIN!r} (URIs {list(uris)})")
        _issue_workloads(cert_dir)
    except (AuthError, ConfigError, OSError) as exc:
        raise SystemExit(f"meshkit demo: cannot use the CA in {cert_dir} (from an earlier "
                         f"run?): {exc}\nDelete {cert_dir} (a new CA is then made) or pass "
                         f"another --workdir.") from None
    return cert_dir


async def renew_certificates(cert_dir: Path) -> None:
    """Issue the workload certificates in ``cert_dir`` anew every half
    :data:`CERT_TTL_H`, until cancelled; the services (and ``meshkit call``) read the
    renewed files within seconds. Without it a stack left running stopped answering once
    they expired (every TLS handshake refused). When the CA cannot issue them any more
    (it expires before a new certificate would: a day after it was made), one line says
    when the stack stops answering, and renewal ends."""
    while True:
        await asyncio.sleep(CERT_TTL_H * 3600 / 2)
        try:
            await asyncio.to_thread(_issue_workloads, cert_dir)
        except (AuthError, ConfigError, OSError) as exc:
            until = describe_certificate(load_certificate(cert_dir / "userd.pem")).not_after
            print(f"  (the workload certificates could not be renewed: {exc}; the stack "
                  f"stops answering at {until:%H:%M} UTC: restart the demo)", flush=True)
            return


def edge_tls(cert_dir: Path) -> TLSOptions:
    """The demo client's (``edge``) TLS options from ``cert_dir``."""
    return TLSOptions(ca_file=cert_dir / "ca.pem", cert_file=cert_dir / f"{security.EDGE}.pem",
                      key_file=cert_dir / f"{security.EDGE}.key")


def print_retries(channels: dict[str, meshkit.MeshChannel]) -> None:
    """Print what the retry layer spent, per dialed service."""
    print("")
    print("Retries (client side, per dialed service):")
    for name, ch in channels.items():
        r = ch.retry
        if r is None:
            continue
        s = r.stats
        ejected = [e.instance_id for e in ch.stats().endpoints if e.ejected]
        print(f"  {name:<8} calls {s.calls:>5}  retries {s.retries:>3}  hedges {s.hedges:>3}  "
              f"budget exhausted {s.budget_exhausted}  budget left {r.budget_left():.0f}"
              + (f"  ejected {ejected}" if ejected else ""))


def how_to_call(stack: Stack, registry_uri: str) -> list[str]:
    """Shell lines that call the running stack, each working as printed when pasted into
    one POSIX shell (in any directory): the environment as ``export`` lines, then the
    ``meshkit`` command of this very installation by absolute path."""
    bindir = Path(sys.executable).parent  # the venv's bin/, symlinks kept (not resolved)
    cli = shlex.quote(str(bindir / "meshkit")) if (bindir / "meshkit").exists() else \
        f"{shlex.quote(sys.executable)} -m meshkit.cli"
    python = shlex.quote(sys.executable)
    targets = shlex.quote(str(stack.workdir / "prometheus-targets.json"))
    lines = [f"export MESHKIT_REGISTRY={shlex.quote(registry_uri)}"]
    if stack.cert_dir is not None:
        lines += [f"export MESHKIT_CERT_DIR={shlex.quote(str(stack.cert_dir))}",
                  f"export MESHKIT_WORKLOAD={security.EDGE}"]
    call = f"{cli} call" + ("" if stack.cert_dir is not None else " --insecure")
    login = '{"email": "you@example.com", "password": "correct horse"}'
    field = "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])"
    uid = "'\"$USER_ID\"'"  # ends the single-quoted JSON, inserts the variable, resumes
    order = ('{"user_id": "' + uid + '", "currency": "EUR", "idempotency_key": "k-1", '
             '"items": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 199}]}')
    lines += [
        f"{cli} services",
        f"{call} userd/CreateUser "
        """'{"email": "you@example.com", "name": "You", "password": "correct horse"}'""",
        f"SESSION=$({call} userd/Authenticate '{login}'); echo \"$SESSION\"",
        f"TOKEN=$(echo \"$SESSION\" | {python} -c '{field}' token)",
        f"USER_ID=$(echo \"$SESSION\" | {python} -c '{field}' user_id)",
        f"{call} userd/UpdateUser '{{\"user_id\": \"{uid}\", \"name\": \"You Too\"}}'",
        f"{call} orderd/PlaceOrder '{order}' -H \"authorization: Bearer $TOKEN\"",
        f"{call} orderd/ListOrders '{{\"user_id\": \"{uid}\"}}' "
        "-H \"authorization: Bearer $TOKEN\"",
        f"{cli} prometheus-targets --out {targets} && cat {targets}",
    ]
    return lines


def print_how_to_call(stack: Stack, registry_uri: str) -> None:
    """Print how to reach the running stack: shell lines to paste, between two markers."""
    print("")
    print("The stack keeps running (Ctrl-C stops it). Call it from another shell by pasting "
          "these lines\n(`meshkit call` finds each method by gRPC reflection; a failed call "
          "exits non-zero):")
    print("---8<---")
    for line in how_to_call(stack, registry_uri):
        print(f"  {line}")
    print("---8<---")
    print("From Python: meshkit.dial('userd') with the same environment; see README, "
          "'Using it'.")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum`` (anything else is a usage error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``meshkit demo``."""
    # the docstring's first line; none under python -OO, which strips docstrings
    p = argparse.ArgumentParser(prog="meshkit demo",
                                description=(__doc__ or "").split("\n")[0] or None)
    p.add_argument("--calls", type=_at_least(10), default=300,
                   help="workload size, >= 10 (default 300)")
    p.add_argument("--concurrency", type=_at_least(1), default=8,
                   help="concurrent workers, >= 1 (default 8)")
    p.add_argument("--timeout-s", type=seconds_arg(zero=False), default=5.0,
                   help="per-call deadline, seconds (> 0, finite; default 5)")
    # the local registry's floor (LocalOptions: ttl_s >= 0.1, a busy loop below)
    p.add_argument("--ttl-s", type=seconds_arg(zero=False, least=0.1), default=2.0,
                   help="registry TTL, seconds (> 0, finite; default 2)")
    p.add_argument("--no-kill", action="store_true", help="do not kill an instance")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the stack up after the workload and print how to call it")
    p.add_argument("--workdir", default=None, type=_workdir,
                   help="directory for registry, databases, logs (kept; a run there again "
                        "reuses its CA)")
    p.add_argument("--keep-workdir", action="store_true", help="do not delete the temp workdir")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext instead of mTLS (JWTs are still used)")
    p.add_argument("--database-url", default=None, type=_postgres_url,
                   help="postgresql://... to use PostgreSQL instead of SQLite files")
    return p


def _workdir(value: str) -> str:
    """``--workdir``: a directory path; ``""`` or blanks (``--workdir "$DIR"`` with the
    variable unset: ``Path("")`` is the working directory, where the whole stack, its CA
    key included, was made and kept) and a ``~`` no shell expanded are usage errors,
    quoted."""
    from meshkit._env import unexpanded_home

    if not value.strip():
        raise argparse.ArgumentTypeError(f"must be a directory path, got {value!r}")
    if (home := unexpanded_home(value)) is not None:
        raise argparse.ArgumentTypeError(
            f"got {value!r}, whose '~' no shell expanded; give the path itself, e.g. "
            f"{home!r}")
    return value


def _postgres_url(value: str) -> str:
    """``--database-url``: a ``postgresql://`` (or ``postgres://``) URL; anything else is
    a usage error (it started every process, each of which then died before READY, and
    ended in a traceback). What is after the scheme is never quoted (a password)."""
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in ("postgresql", "postgres"):
        raise argparse.ArgumentTypeError(
            "must be a postgresql://user@host:port/db URL (the demo uses SQLite files "
            f"without it), got one with scheme {scheme or '(none)'!r}")
    return value


def _unblock(signals: tuple[signal.Signals, ...]) -> None:
    """Unblock ``signals``, just given handlers: a launcher that blocked them (the signal
    mask survives fork and exec) would otherwise keep ``kill`` from ever reaching them, as
    Go's ``signal.Notify`` and meshkit's ``serve()`` see to."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


_EXIT_INTERRUPTED = 128 + signal.SIGINT
_EXIT_TERMINATED = 128 + signal.SIGTERM


async def run_until_terminated(args: argparse.Namespace) -> int:
    """:func:`run`, cancelled by SIGTERM as ``asyncio.run`` cancels it on Ctrl-C, so that
    its ``finally`` stops every process it started and removes a temporary workdir;
    returns its exit code, or 143 (128 + SIGTERM) after SIGTERM. A SIGTERM while the
    clean-up runs (``run`` sets ``args.cleaning_up`` as it starts it: after the workload
    ended, Ctrl-C or a first SIGTERM) does not cut it short: it runs to its end (SIGKILL
    remains), then 143."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    terminated = False
    args.cleaning_up = False

    def on_sigterm() -> None:
        nonlocal terminated
        if not terminated:
            terminated = True
            if not args.cleaning_up:
                task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    _unblock((signal.SIGTERM,))
    try:
        code = await run(args)
    except asyncio.CancelledError:
        if not terminated:
            raise
        code = _EXIT_TERMINATED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    if terminated:
        print("Terminated (SIGTERM); every process was stopped.")
        return _EXIT_TERMINATED
    return code


def _escape_unencodable_stdout() -> Callable[[], None]:
    """Make ``sys.stdout`` write what its encoding cannot encode escaped (``\\u2014``,
    the ``backslashreplace`` handler stderr has) instead of raising
    ``UnicodeEncodeError``: the report's dashes on an ASCII stdout
    (``PYTHONIOENCODING=ascii``, an ASCII locale) ended ``python -m examples.ecom.demo``
    in a traceback after its work was done (``meshkit demo`` has its stdout escaped by
    ``meshkit.cli``). Returns the function that puts the stream's own handler back; a
    stream that cannot be reconfigured (a ``StringIO``, a closed one) is left as it is."""
    stream = sys.stdout
    errors = getattr(stream, "errors", None)
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None or not isinstance(errors, str):
        return lambda: None
    try:
        reconfigure(errors="backslashreplace")
    except (OSError, ValueError, TypeError):  # closed, or not a text stream that takes it
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(Exception):
            reconfigure(errors=errors)

    return restore


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``meshkit demo``; returns the exit code: the run's (0 passed, 1
    failed; 1 too, with one message on stderr naming it and the end of its log, when a
    process of the stack does not start), 130 after Ctrl-C, 143 after SIGTERM, every
    process stopped either way.

    Raises:
        SystemExit: a usage error (status 2, nothing created), or a CA in ``--workdir``
            the demo cannot use.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("MESHKIT_LOG_LEVEL", "WARNING"), json=False)
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="meshkit-demo-")
        args.own_workdir = True
    try:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, or under one: status 2, not a traceback
        reason = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        parser.error(f"argument --workdir: cannot use {args.workdir!r}: {reason or exc}")
    restore = _escape_unencodable_stdout()
    try:
        return asyncio.run(run_until_terminated(args))
    except StartError as exc:  # every process was stopped: what went wrong, no traceback
        print(f"meshkit demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted; every process was stopped.")
        return _EXIT_INTERRUPTED
    finally:
        restore()
        # run() removes it too; not if it failed before its clean-up started (its first
        # line printed to a closed stdout, say), with the demo CA's key in it
        if getattr(args, "own_workdir", False) and not args.keep_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
