"""Runs fault scenarios one at a time and judges them; prints the table.

For each scenario :func:`run_scenario` starts a fresh stack (:func:`running_stack`), starts
its own workload, lets it run ``pre_s`` to learn the pre-fault rate, calls the scenario's
``inject`` (which returns when the fault is over), keeps the workload running until calls
are healthy again for ``settle_s`` (or ``max_post_s`` passed), lets the scenario check what
it must while the stack is up, stops the workload, reads the stored orders back from the
database, and judges. Every scenario is bounded by ``budget_s`` as a whole.

In quick mode, scenarios marked ``shares_stack`` (faults that leave the stack as it was:
malformed requests, huge deadlines, refused certificates, a registry file unreadable for a
while) that follow each other with the
same :class:`StackSpec` run on one stack (:class:`SharedStack`), each with its own workload,
so each judges only its own calls, its own orders (rows stored while it ran) and its own
log lines; a stack is shared no further once a scenario on it did not pass or a process
exited; the workload users signed up on a stack are reused by the later workloads on it.
That saves a stack start and stop (about 4 s) and 16 sign-ups (about 3 s) per scenario.

Criteria every scenario shares (see :class:`Outcome`):

* **recovery**: the workload's calls are healthy again (see :mod:`._workload`) within the
  scenario's ``recovery_bound_s`` of the fault's end, or of its start for faults that
  should not hurt callers at all (``hurts=False``), where moreover no workload call may
  fail;
* **orders**: 0 acknowledged orders missing from the database, 0 idempotency keys stored
  twice;
* **hygiene**: no status message a caller saw names an exception class, a file path or a
  network address;
* **no restart**: no service process exited on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc

from meshkit.auth import identity_dns_name
from tests.faults._checks import audit, leaky_messages, stored_orders
from tests.faults._stack import EnvironmentProblem, StackEnv, StackSpec, running_stack
from tests.faults._workload import Call, Health, Workload, ok_rate, recovery_s

TRUST_DOMAIN = "meshkit.local"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """Durations of one mode (seconds)."""

    name: str
    pre_s: float
    max_post_s: float
    settle_s: float
    budget_s: float
    share_stacks: bool = False




QUICK = Timing(name="quick", pre_s=1.5, max_post_s=6.0, settle_s=1.5, budget_s=60.0,
               share_stacks=True)
LONG = Timing(name="long", pre_s=5.0, max_post_s=20.0, settle_s=3.0, budget_s=150.0)


@dataclass
class Outcome:
    """One row of the table, and why it passed or not."""

    scenario: str
    item: str
    calls: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    recovery_s: float | None = None
    recovery_from: str = "end"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    environment: bool = False  # the error is something missing on the machine
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL`` (a criterion missed) or ``ERROR`` (the run itself broke)."""
        if self.error is not None:
            return "ERROR"
        return "FAIL" if self.problems else "PASS"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (with the verdict)."""
        return {**asdict(self), "verdict": self.verdict}


class Run:
    """What a scenario works with while it runs: the stack, the workload, and its notes."""

    def __init__(self, env: StackEnv, workload: Workload, timing: Timing,
                 outcome: Outcome) -> None:
        self.env = env
        self.workload = workload
        self.timing = timing
        self.outcome = outcome
        self.fault_start = 0.0
        self.fault_end = 0.0
        self.probes: list[Call] = []  # calls the scenario made, status messages checked

    @property
    def quick(self) -> bool:
        """Whether this is the quick mode."""
        return self.timing is QUICK

    def problem(self, text: str) -> None:
        """Record a missed criterion."""
        self.outcome.problems.append(text)

    def note(self, text: str) -> None:
        """Record a measurement for the report."""
        self.outcome.notes.append(text)

    def start_fault(self) -> None:
        """Mark the fault's start (now)."""
        self.fault_start = time.monotonic()

    def end_fault(self) -> None:
        """Mark the fault's end (now)."""
        self.fault_end = time.monotonic()

    def address(self, instance_id: str) -> tuple[str, int]:
        """``(host, port)`` an instance serves on."""
        host, port = self.env.stack.procs[instance_id].address.rsplit(":", 1)
        return host, int(port)

    def admin_port(self, instance_id: str) -> str:
        """The admin (metrics) port an order-service instance announced."""
        for ep in self.workload.orders_channel.endpoints():
            if ep.key == instance_id and ep.instance.meta.get("admin_port"):
                return str(ep.instance.meta["admin_port"])
        raise AssertionError(f"{instance_id} announced no admin port")

    def pem(self, name: str) -> tuple[bytes, bytes]:
        """``(certificate chain, key)`` PEM of a workload in the stack's cert dir."""
        d = self.env.cert_dir
        return (d / f"{name}.pem").read_bytes(), (d / f"{name}.key").read_bytes()

    def channel(self, instance_id: str, *, cert: tuple[bytes, bytes] | None = None,
                options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A plain grpc.aio mTLS channel to one instance (the edge certificate unless
        ``cert`` gives another chain and key); the caller closes it."""
        chain, key = cert or self.pem("edge")
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.env.cert_dir / "ca.pem").read_bytes(),
            private_key=key, certificate_chain=chain)
        service = self.env.stack.procs[instance_id].service
        opts = (("grpc.ssl_target_name_override", identity_dns_name(TRUST_DOMAIN, service)),
                *options)
        return grpc.aio.secure_channel(self.env.stack.procs[instance_id].address, creds,
                                       options=opts)

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS client context with the edge certificate, ALPN ``h2`` (for raw HTTP/2)."""
        ctx = ssl.create_default_context(cafile=str(self.env.cert_dir / "ca.pem"))
        ctx.load_cert_chain(self.env.cert_dir / "edge.pem", self.env.cert_dir / "edge.key")
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def probe(self, method: str, coro: Any, *, check_message: bool = True
                    ) -> tuple[grpc.StatusCode, str, Any]:
        """Await one probe call; return ``(code, message, reply or None)``. Its status
        message joins the hygiene check unless ``check_message`` is false (for refusals
        that grpcio's client makes up itself, such as a failed handshake)."""
        t0 = time.monotonic()
        try:
            reply = await coro
        except grpc.aio.AioRpcError as exc:
            code, details, reply = exc.code(), exc.details() or "", None
        else:
            code, details = grpc.StatusCode.OK, ""
        if check_message:
            self.probes.append(Call(method, code, details, t0, time.monotonic()))
        return code, details, reply


class Scenario:
    """A fault scenario. Subclasses set the class attributes and override :meth:`inject`
    (which must call :meth:`Run.start_fault` and :meth:`Run.end_fault`), and may override
    :meth:`check` (runs while the stack is still up, after the workload recovered or gave
    up). Their docstrings say what they do and their criteria."""

    name: ClassVar[str]
    item: ClassVar[str]
    spec: ClassVar[StackSpec] = StackSpec()
    hurts: ClassVar[bool] = True
    recovery_bound_s: ClassVar[float] = 5.0
    quick: ClassVar[bool] = False
    iterations_per_s: ClassVar[float] = 4.0
    #: the fault leaves the stack as it was, so in quick mode the scenario may run on the
    #: stack of the scenario before it (see the module docstring)
    shares_stack: ClassVar[bool] = False

    async def inject(self, run: Run) -> None:
        """Cause the fault and end it."""
        raise NotImplementedError

    async def check(self, run: Run) -> None:
        """Scenario-specific criteria (stack still up)."""


def p50(values: Sequence[float]) -> float:
    """The median, 0 for no values."""
    return statistics.median(values) if values else 0.0


class SharedStack:
    """At most one running stack kept between scenarios that may share it; :meth:`close`
    it when done (also on error and Ctrl-C)."""

    def __init__(self, *, keep_workdir: bool = False) -> None:
        self.keep_workdir = keep_workdir
        self.env: StackEnv | None = None
        self._exit = contextlib.AsyncExitStack()

    async def get(self, spec: StackSpec) -> StackEnv:
        """The running stack if it was built to ``spec``, else a new one (the old one
        stopped first)."""
        if self.env is not None and self.env.spec == spec:
            return self.env
        await self.close()
        self.env = await self._exit.enter_async_context(
            running_stack(spec, keep_workdir=self.keep_workdir))
        return self.env

    async def close(self) -> None:
        """Stop the stack, if one runs."""
        self.env = None
        exit_, self._exit = self._exit, contextlib.AsyncExitStack()
        await exit_.aclose()


async def run_scenario(scenario: Scenario, timing: Timing, *,
                       keep_workdir: bool = False,
                       shared: SharedStack | None = None) -> Outcome:
    """Run one scenario and judge it (never raises, except Ctrl-C). On a fresh stack,
    unless ``shared`` is given, the timing shares stacks and the scenario may share one:
    then on ``shared``'s stack, which is kept for the next scenario only if this one
    passed and no process exited."""
    out = Outcome(scenario=scenario.name, item=scenario.item,
                  recovery_from="end" if scenario.hurts else "start")
    t0 = time.monotonic()
    share = shared is not None and timing.share_stacks and scenario.shares_stack
    try:
        async with asyncio.timeout(timing.budget_s):
            if shared is not None and not share:
                await shared.close()
            if share:
                assert shared is not None
                env = await shared.get(scenario.spec)
                await _run_on(env, scenario, timing, out)
                if out.verdict != "PASS" or env.stack.crashed():
                    await shared.close()
            else:
                async with running_stack(scenario.spec, keep_workdir=keep_workdir) as env:
                    await _run_on(env, scenario, timing, out)
    except EnvironmentProblem as exc:
        out.error = str(exc)
        out.environment = True
    except TimeoutError:
        out.error = f"scenario did not finish within its {timing.budget_s:.0f} s budget"
    except Exception as exc:
        tb = traceback.format_exception(exc)
        out.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        out.notes.append("".join(tb[-3:])[-600:])
    if share and out.error is not None:
        assert shared is not None
        await shared.close()  # in an unknown state
    out.seconds = time.monotonic() - t0
    return out


def _unhealthy_windows(calls: list[Call], ref: float, end: float, health: Health,
                       limit: int = 4) -> list[str]:
    """Notes on the whole seconds from ``ref`` to ``end`` that were not healthy (at most
    ``limit``): what a missed recovery bound consisted of (slow calls or failed ones)."""
    notes: list[str] = []
    t = ref
    while t + 1.0 <= end and len(notes) < limit:
        inside = [c for c in calls if t <= c.end < t + 1.0]
        if not health.healthy(inside, t, t + 1.0):
            ok = [c.end - c.start for c in inside if c.ok]
            notes.append(f"second {t - ref:+.0f}..{t - ref + 1:+.0f} s: {len(ok)} ok (bound "
                         f"{health.min_share * health.pre_ok_per_s:.0f}), "
                         f"{len(inside) - len(ok)} failed, ok p50 "
                         f"{p50(ok) * 1000:.0f} ms, max {max(ok, default=0.0) * 1000:.0f} ms")
        t += 1.0
    return notes


async def _run_on(env: StackEnv, scenario: Scenario, timing: Timing, out: Outcome) -> None:
    earlier = set(await stored_orders(env))  # rows of earlier scenarios on a shared stack
    async with Workload(env, iterations_per_s=scenario.iterations_per_s) as w:
        run = Run(env, w, timing, out)
        await asyncio.sleep(timing.pre_s)
        run.fault_start = time.monotonic()
        await scenario.inject(run)
        if not run.fault_end:
            run.end_fault()
        pre = ok_rate(w.calls, w.started_at + 0.5, run.fault_start)
        health = Health(pre_ok_per_s=pre)
        ref = run.fault_end if scenario.hurts else run.fault_start
        deadline = run.fault_end + timing.max_post_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # ends the run within 0.1 s of the settled recovery
            now = time.monotonic()
            rec = recovery_s(w.calls, ref, now, health, timing.settle_s)
            if rec is not None and now - ref - rec >= timing.settle_s + 0.5:
                break
        await scenario.check(run)
        stopped_at = time.monotonic()  # windows end here: the workers wind down after
        await w.stop()
        spread = ", ".join(f"{e.instance_id} {e.calls}"
                           for e in w.orders_channel.stats().endpoints)
        out.notes.append(f"order-service attempts per instance (as the workload's "
                         f"balancer picked them): {spread}")
        out.recovery_s = recovery_s(w.calls, ref, stopped_at, health, timing.settle_s)
        out.notes.extend(_unhealthy_windows(w.calls, ref, stopped_at, health))
        out.calls = len(w.calls)
        out.failed = dict(Counter(c.code.name for c in w.calls if not c.ok).most_common())
        before = [c.end - c.start for c in w.calls if c.end < run.fault_start]
        out.notes.append(f"pre-fault {pre:.0f} ok calls/s, p50 {p50(before) * 1000:.1f} ms")
        seen: set[tuple[str, str]] = set()
        for c in w.calls:
            if not c.ok and (c.code.name, c.details) not in seen and len(seen) < 3:
                seen.add((c.code.name, c.details))
                out.notes.append(f"failure at {c.end - run.fault_start:+.1f} s from the "
                                 f"fault: {c.method} {c.code.name} {c.details[:140]!r}")
        messages = [c.details for c in (*w.calls, *run.probes) if not c.ok]
        acked = dict(w.acked)
    stored = [row for row in await stored_orders(env) if row not in earlier]
    crashed = env.stack.crashed()
    a = audit(acked, stored)
    out.acked, out.stored, out.lost, out.duplicates = a.acked, a.stored, a.lost, a.duplicated_keys
    if out.recovery_s is None:
        out.problems.append(f"no recovery: calls not healthy again for {timing.settle_s:.1f} s "
                            f"before the run ended ({timing.max_post_s:.0f} s after the fault)")
    elif out.recovery_s > scenario.recovery_bound_s:
        out.problems.append(f"recovery took {out.recovery_s:.1f} s from the fault's "
                            f"{out.recovery_from} (bound {scenario.recovery_bound_s:.1f} s)")
    if not scenario.hurts and out.failed:
        n = sum(out.failed.values())
        out.problems.append(f"{n} workload call(s) failed; this fault must not fail any")
    if a.lost:
        out.problems.append(f"{a.lost} acknowledged order(s) not stored, e.g. key "
                            f"{a.lost_examples[0]}")
    if a.duplicated_keys:
        out.problems.append(f"{a.duplicated_keys} idempotency key(s) stored twice")
    leaky = leaky_messages(messages)
    if leaky:
        out.problems.append("status messages leak internals: " + "; ".join(leaky))
    for iid, (rc, tail) in crashed.items():
        out.problems.append(f"{iid} exited on its own (code {rc}): "
                            + " | ".join(line[:120] for line in tail[-2:]))


# -- the table ------------------------------------------------------------------------------
def _failed(out: Outcome) -> str:
    if not out.failed:
        return "0"
    return " ".join(f"{k}:{v}" for k, v in out.failed.items())


def table(outcomes: Sequence[Outcome]) -> str:
    """The results as a Markdown table, then each scenario's problems and notes."""
    head = ("| scenario | item | calls | failed by status | acked / stored | duplicates "
            "| recovery s | verdict |")
    lines = [head, "|---|---|---:|---|---:|---:|---:|---|"]
    for o in outcomes:
        rec = ("-" if o.error else "never" if o.recovery_s is None
               else f"{o.recovery_s:.1f} (from {o.recovery_from})")
        lines.append(f"| {o.scenario} | {o.item} | {o.calls} | {_failed(o)} | "
                     f"{o.acked} / {o.stored} | {o.duplicates} | {rec} | {o.verdict} |")
    lines.append("")
    for o in outcomes:
        lines.append(f"{o.scenario} ({o.verdict}, {o.seconds:.0f} s):")
        if o.error:
            lines.append(f"  error: {o.error}")
        lines.extend(f"  - MISSED: {p}" for p in o.problems)
        lines.extend(f"  - {n}" for n in o.notes)
    return "\n".join(lines)


def write_json(path: Path, outcomes: Sequence[Outcome], mode: str) -> None:
    """Write the outcomes as JSON (for the pytest wrapper)."""
    path.write_text(json.dumps({"mode": mode, "outcomes": [o.to_json() for o in outcomes]},
                               indent=2))

