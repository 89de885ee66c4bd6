"""Smoke test of the benchmark runner: a ``--smoke`` run finishes and writes well-formed JSON."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import numbers
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks.runner import main
from benchmarks.scenarios import SCENARIOS
from benchmarks.scenarios._common import PLANS, Ctx
from tests.support.skips import require_uvloop

pytestmark = pytest.mark.timeout(150)


def _numbers(d: dict[str, Any], *keys: str) -> None:
    for k in keys:
        assert isinstance(d[k], numbers.Real), (k, d[k])


def _children() -> set[int]:
    """This process's live (not yet reaped: zombies left out) children, from /proc."""
    me = str(os.getpid())
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[1] == me and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def smoke_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON document of one ``--smoke`` run (every scenario), which the two tests
    below read: one run of the runner, its worker processes started once. The smoke
    run stops each scenario's processes (and the convergence scenario's etcd) while
    the next scenario runs: none of them outlives the run."""
    out = tmp_path_factory.mktemp("smoke")
    before = _children()
    assert main(["--smoke", "--out", str(out)]) == 0
    assert _children() - before == set()
    (path,) = out.glob("*.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.mark.timeout(240)  # the module's one --smoke run is set up in the first of these
def test_the_full_stack_contenders_build(smoke_doc: dict[str, Any]) -> None:
    """The full-stack contenders of the overhead scenario (``make bench`` runs every
    contender; ``--smoke`` the full-stack ones and a few others) build and answer calls:
    ``full+mtls`` served each contender's service with the ``echo`` workload's
    certificate, which serve() now refuses, and ``make bench`` failed its whole overhead
    scenario while the suite passed."""
    names = ["raw", "defaults", "full", "full-inline", "full-1pct", "full+mtls"]
    assert smoke_doc["errors"] == {}, smoke_doc["errors"]
    for conc in ("1", "32"):
        rows = smoke_doc["scenarios"]["overhead"]["by_concurrency"][conc]
        assert set(rows) == set(PLANS["smoke"].overhead_only or ()) >= set(names), sorted(rows)
        assert all(row["calls"] > 0 for row in rows.values()), rows


@pytest.mark.timeout(240)
def test_smoke_run_writes_every_scenario(smoke_doc: dict[str, Any]) -> None:
    """A --smoke run exits 0 and its JSON has every scenario with numeric results."""
    doc = smoke_doc
    assert doc["mode"] == "smoke" and doc["errors"] == {}
    assert set(doc["scenarios"]) == set(SCENARIOS)
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["packages"]["grpcio"]
    sc = doc["scenarios"]
    for conc in ("1", "32"):
        rows = sc["overhead"]["by_concurrency"][conc]
        assert {"raw", "mesh"} <= set(rows)
        for row in rows.values():
            _numbers(row, "qps", "p50_us", "p99_us", "client_cpu_s_per_1k",
                     "server_cpu_s_per_1k", "qps_ratio", "added_p50_us")
            assert row["calls"] > 0
    hand_deps = all(importlib.util.find_spec(m) for m in ("grpc_interceptor", "tenacity"))
    assert ("hand" in sc["compare"]["by_concurrency"]["32"]) == hand_deps
    if hand_deps:
        full = sc["compare"]["by_concurrency"]["32"]["full"]
        low, high = full["qps_ratio_vs_hand_range"]
        assert low <= full["qps_ratio_vs_hand"] <= high
    for row in sc["slow_replica"]["contenders"].values():
        _numbers(row, "qps", "p50_us", "p99_us", "slow_share")
    for row in sc["failover"]["contenders"].values():
        _numbers(row, "failed_calls", "extra_p99_us")
        assert row["rounds"]
    assert sc["convergence"]["contenders"]
    _numbers(sc["fanout"]["memory"], "python_bytes_per_endpoint", "rss_bytes_per_endpoint")
    assert set(sc["fanout"]["pick_us"]["100"]) >= {"RoundRobin", "P2C", "RingHash (keyed)"}
    for t in doc["targets"]:
        assert {"target", "goal", "value", "unit", "met"} <= set(t)
        assert set(t) <= {"target", "goal", "value", "unit", "met", "note"}


@pytest.mark.parametrize("mode", sorted(PLANS))
async def test_only_the_smoke_plan_overlaps_tear_downs_and_the_run_awaits_them(
        mode: str) -> None:
    """A scenario's tear-down (stopping its workers, closing its registries) runs before
    the next scenario starts in the measured plans (full, quick: no worker exits during
    a measurement); only the smoke run leaves it running, and :meth:`Ctx.stopped` (the
    run's end) waits for it, whatever it raised. The smoke run above shows no process
    outlives it only when the last scenario's tear-down is quick: with ``stopped()`` a
    no-op it passed as well."""
    ctx = Ctx(plan=PLANS[mode], sup=None, secrets=None,  # type: ignore[arg-type]
              workdir=Path("."))
    gate = asyncio.Event()
    finished: list[bool] = []

    async def work(fail: bool) -> None:
        await gate.wait()
        await asyncio.sleep(0.05)  # a worker's exit: some loop turns
        finished.append(fail)
        if fail:
            raise OSError("a worker that would not stop")

    if mode != "smoke":
        gate.set()
    tear_downs = [asyncio.ensure_future(ctx.tear_down(work(fail))) for fail in (True, False)]
    await asyncio.sleep(0)  # the tear_down() calls start
    if mode == "smoke":
        assert all(t.done() for t in tear_downs) and finished == []  # left running
        gate.set()
    results = await asyncio.gather(*tear_downs, return_exceptions=True)
    if mode != "smoke":  # run inline: done, and its error reaches the caller
        assert sorted(finished) == [False, True] and ctx.stopping == []
        assert sum(isinstance(r, OSError) for r in results) == 1
    await ctx.stopped()
    assert sorted(finished) == [False, True] and ctx.stopping == []
    assert PLANS[mode].overlap_stops == (mode == "smoke")


def test_sessions_run_the_overhead_rounds_on_fresh_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sessions 2: the rounds are split over two sets of worker processes (the second
    set's logs carry the generation in their names), and every round is reported."""
    assert main(["--smoke", "--scenarios", "overhead", "--contenders", "raw",
                 "--concurrency", "1", "--sessions", "2", "--keep-workdir",
                 "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    overhead = json.loads(path.read_text())["scenarios"]["overhead"]
    assert overhead["sessions"] == 2
    assert overhead["by_concurrency"]["1"]["raw"]["rounds"] == 2
    kept = Path(capsys.readouterr().out.split("work directory kept: ")[1].split()[0])
    try:
        logs = {p.name for p in (kept / "logs").iterdir()}
        assert {"srv-raw.log", "srv-raw-1.log", "cli-raw.log", "cli-raw-1.log"} <= logs
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_micro_ab_runs_and_prints_every_lever() -> None:
    """``python -m benchmarks.micro`` at its smallest prints a figure for each lever (run in
    a subprocess: it reconfigures structlog for the whole process)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.micro", "--rounds", "1",
                           "--calls", "64"], capture_output=True, text=True, timeout=60,
                          check=False, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    tele_client, tele_server, tele_e2e, fusion, log, encoder, limit1, limit1000, moving = (
        proc.stdout.splitlines())
    for side, line in (("client", tele_client), ("server", tele_server), ("e2e", tele_e2e)):
        assert line.startswith(f"telemetry  {side}") and "us/call" in line
        assert all(f" {v} " in line for v in ("tracing", "metrics", "accesslog", "full",
                                               "full-1pct"))
    assert fusion.startswith("fusion") and "us/call" in fusion
    assert log.startswith("accesslog") and "us/line" in log
    assert encoder.startswith("encoder") and "us/line" in encoder
    assert limit1.startswith("ratelimit     1 key") and "us/hit" in limit1
    assert limit1000.startswith("ratelimit  1000 keys") and "us/hit" in limit1000
    assert moving.startswith("ratelimit     1 key  moving") and "us/hit" in moving
    for line in (fusion, log, encoder, limit1, limit1000, moving):
        values = [float(x) for x in line.split()  # the figures, printed with one decimal
                  if "." in x and x.replace(".", "").lstrip("-").isdigit()]
        assert len(values) == 3 and values[0] > 0 and values[1] > 0


_COUNT_DROPS = """
import asyncio, os, sys
from opentelemetry.sdk._shared_internal import BatchProcessor
import benchmarks.micro as micro
seen = {"spans": 0, "dropped": 0}
emit = BatchProcessor.emit
def counting(self, data):
    seen["spans"] += 1
    seen["dropped"] += len(self._queue) == self._max_queue_size
    emit(self, data)
BatchProcessor.emit = counting
with open(os.devnull, "w") as sink:
    asyncio.run(micro.telemetry(sink, rounds=1, calls=int(sys.argv[1])))
print(seen["spans"], seen["dropped"])
"""


def test_micro_telemetry_rounds_drop_no_span() -> None:
    """A null-transport telemetry round ends spans faster than the SDK batch processor's
    thread exports them: with the SDK's 2,048-span queue, 13 % of a 6,000-call round's
    spans were dropped (each with a log record), so the figure was not the cost of
    exporting every span. Every span is kept and exported within the timed round now."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _COUNT_DROPS, "6000"], capture_output=True,
                          text=True, timeout=120, check=False, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    spans, dropped = (int(x) for x in proc.stdout.split())
    assert spans >= 4 * 6000  # tracing, full and full-1pct's sampled ones, both sides
    assert dropped == 0


# Two sessions (the second starting the trees in the other order) in one case: the
# sessions' loop is the same for every side, and each session starts its processes one
# after another (a Python process importing grpc each).
@pytest.mark.parametrize(("side", "telemetry", "loop", "sessions"),
                         [("server", "defaults", "asyncio", 1),
                          ("client", "traced", "asyncio", 2),
                          ("both", "defaults", "asyncio", 1),
                          ("server", "defaults", "uvloop", 1)])
def test_ab_runs_both_trees_in_alternating_rounds(side: str, telemetry: str,
                                                  loop: str, sessions: int) -> None:
    """``python -m benchmarks.ab`` at its smallest, with this checkout as both trees: each
    tree's worker answers every round (on the event loop asked for), and the summary
    pairs the rounds; every worker's pipes are closed when it ended (its stdout pipe was
    left to the collector: a ResourceWarning per worker)."""
    from benchmarks import ab

    if loop == "uvloop":
        require_uvloop()
    here = str(Path(__file__).parents[2])
    seen: list[list[str]] = []
    procs: list[subprocess.Popen[str]] = []
    real = ab._Proc.__init__

    def recording(self: Any, *args: Any, **kw: Any) -> None:
        real(self, *args, **kw)
        seen.append(self.ready)
        procs.append(self.proc)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ab._Proc, "__init__", recording)
        got = ab.run(here, here, side=side, telemetry=telemetry, rounds=2, calls=20,
                     callers=2, loop=loop, sessions=sessions, warmup_calls=20)
    assert seen and all(ready[-1] == loop for ready in seen)
    assert [(p.returncode is not None, p.stdin is None or p.stdin.closed,
             p.stdout is None or p.stdout.closed) for p in procs] == \
        [(True, True, True)] * len(procs)
    # each session's fresh processes: a server and its driver per tree, or one server
    # and a client per tree
    assert len(seen) == (3 if side == "client" else 4) * sessions
    for name in ("base", "new"):
        assert len(got["rounds"][name]) == 2
        assert all(p50 > 0 and mean > 0 and qps > 0 for p50, mean, qps in got["rounds"][name])
        assert got["summary"][name]["qps"] > 0
    assert 0 <= got["summary"]["rounds_new_lower"] <= 2


def test_layers_prints_every_layer_of_both_sides() -> None:
    """``python -m benchmarks.layers`` at its smallest prints a row per variant and side,
    each with a positive CPU figure (a subprocess: it reconfigures logging)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.layers", "--rounds", "1",
                           "--calls", "50"], capture_output=True, text=True, timeout=120,
                          check=False, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines()
            if line.startswith("| ") and "variant" not in line]
    names = [(r[1].strip()) for r in rows]
    for name in ("bare", "+p2c", "+outlier", "+retry", "+tracing", "+metrics", "+accesslog",
                 "defaults", "full", "+deadline", "+peer", "+jwt", "+ratelimit"):
        assert name in names, proc.stdout
    assert all(float(r[2]) > 0 for r in rows)


@pytest.mark.parametrize("variant", ["raw", "bare", "defaults"])
def test_instruction_count_child_runs_each_variant(variant: str) -> None:
    """The process benchmarks.instructions measures under callgrind runs its calls and
    exits cleanly for each kind of variant (callgrind itself is too slow for the suite)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--child",
                           variant, "48", "4"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_instructions_per_call_divide_by_the_calls_the_children_ran(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each callgrind child runs ``calls // callers`` calls per caller, so with 3 callers
    the default 800 and 2400 calls ran 798 and 2400: ``measure`` divided the difference
    of the counts by 1600 calls, not the 1602 run (0.1 % high; more with small counts
    and many callers). It now divides by the calls the children ran."""
    from benchmarks import instructions

    def count(variant: str, calls: int, callers: int, out_dir: str) -> int:
        return 5_000_000 + 1000 * (calls // callers * callers)  # 1000 per call run

    monkeypatch.setattr(instructions, "_count", count)
    assert instructions.measure("raw", 800, 2400, callers=3) == 1000.0
    assert instructions.measure("raw", 10, 21, callers=4) == 1000.0  # 8 and 20 calls


def test_instructions_refuse_counts_that_run_the_same_calls(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--calls-low`` and ``--calls-high`` that run as many calls with ``--callers``
    (5 and 7 with 4 callers: 4 each) would divide by zero: a usage error."""
    from benchmarks import instructions

    def no_callgrind(*args: Any) -> float:
        raise AssertionError("callgrind started")

    monkeypatch.setattr(instructions, "measure", no_callgrind)
    with pytest.raises(SystemExit) as exc:
        instructions.main(["--calls-low", "5", "--calls-high", "7", "--callers", "4"])
    assert exc.value.code == 2 and "4 calls each" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["instructions", "opcodes"])
def test_count_tools_refuse_unknown_variants(tool: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown variant is a usage error that names it (benchmarks.instructions and
    benchmarks.opcodes share the variants)."""
    import importlib

    main = importlib.import_module(f"benchmarks.{tool}").main
    with pytest.raises(SystemExit) as exc:
        main(["--variants", "raw,fast"])
    assert exc.value.code == 2 and "'fast'" in capsys.readouterr().err


def test_cpu_split_runs_each_variant_and_compares_with_raw(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.instructions --cpu`` runs each variant's process without callgrind and
    prints user and system time and context switches per call, with what each variant
    adds to raw."""
    from benchmarks.instructions import main as instructions

    assert instructions(["--cpu", "1", "--variants", "raw,bare", "--calls-high", "64",
                         "--callers", "2"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| raw") or line.startswith("| bare")]
    assert [r[1].strip() for r in rows] == ["raw", "bare"]
    assert float(rows[0][2]) > 0 and float(rows[1][2]) > 0  # user us per call
    assert rows[0][4].strip() == "" and rows[1][4].strip().startswith(("+", "-"))


def test_opcode_count_names_the_functions_a_variant_adds(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.opcodes`` counts each variant's bytecodes per call in its own process
    and lists, against the first variant, the functions that differ: the bare mesh's call
    path (its channel's attempt) appears there, and only the mesh runs it."""
    from benchmarks.opcodes import main as opcodes

    assert opcodes(["--variants", "raw,bare", "--calls", "40", "--top", "40"]) == 0
    out = capsys.readouterr().out
    totals = {line.split("|")[1].strip(): float(line.split("|")[2].replace(",", ""))
              for line in out.splitlines() if line.startswith(("| raw", "| bare"))}
    assert set(totals) == {"raw", "bare"} and 0 < totals["raw"] < totals["bare"]
    attempt = [line for line in out.splitlines() if "meshkit/channel.py" in line
               and " _attempt_unary`" in line]
    assert len(attempt) == 1, out
    base, mesh, diff = (float(c) for c in attempt[0].split("|")[2:5])
    assert base == 0 and mesh > 0 and diff == mesh


def test_opcode_count_on_uvloop_leaves_the_loops_turns_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    """With ``--loop uvloop`` the variants run on uvloop, whose turns are C: raw grpc.aio
    runs well under asyncio's loop's ~4,900 Python bytecodes per call (about 960)."""
    from benchmarks.opcodes import main as opcodes

    assert opcodes(["--variants", "raw", "--calls", "40", "--loop", "uvloop"]) == 0
    out = capsys.readouterr().out
    assert "uvloop event loop" in out
    (raw,) = [float(line.split("|")[2].replace(",", "")) for line in out.splitlines()
              if line.startswith("| raw")]
    assert 0 < raw < 2500


def test_streams_measures_each_kind_per_message(capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.streams`` runs a stream of each kind through raw grpc.aio and the mesh
    and prints CPU and bytecodes per message; the bytecodes are counted by function, and
    only the mesh's run the mesh's per-message layers (the client call object's ``read``
    and ``write``), which ``--top`` lists among the largest differences. Totals are not
    compared: how many loop turns a message takes depends on timing, and with a few
    messages a stream a loaded machine moves them either way."""
    from benchmarks import streams as streams_module
    from benchmarks.streams import main as streams

    bidi: dict[str, dict[str, float]] = {}  # the bidi children's bytecodes by function
    real = streams_module.measure

    def recording(variant: str, kind: str, *args: Any, **kw: Any) -> dict[str, Any]:
        got = real(variant, kind, *args, **kw)
        if kind == "bidi" and "bytecodes" in got:
            bidi[variant] = got["bytecodes"]
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streams_module, "measure", recording)
        assert streams(["--variants", "raw,bare", "--messages", "40", "--rounds", "1",
                        "--streams", "1", "--bytecodes", "--top", "60"]) == 0
    out = capsys.readouterr().out
    for kind in ("server", "client", "bidi"):
        assert f"{kind} streams" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| raw", "| bare"))]
    assert [r[1].strip() for r in rows] == ["raw", "bare"] * 3
    for row in rows:
        assert float(row[2]) > 0 and float(row[4].replace(",", "")) > 0  # CPU, bytecodes
    raw, bare = bidi["raw"], bidi["bare"]

    def reads(counts: dict[str, float]) -> list[str]:
        return [f for f in counts if f.startswith("meshkit/_calls.py") and f.endswith(" read")]

    assert not reads(raw) and reads(bare), bare
    top = out.split("bidi streams, bare against raw: the 60 largest differences", 1)[1]
    assert all(f"`{f}`" in top for f in reads(bare)), top


def test_streams_measures_write_style_uploads(capsys: pytest.CaptureFixture[str]) -> None:
    """``--kinds writes`` (not run by default) measures a stream-unary call written with
    ``write()`` and ``done_writing()``: the echo's answer counts every message, or the
    child fails."""
    from benchmarks.streams import main as streams

    assert streams(["--kinds", "writes", "--variants", "raw,bare", "--messages", "40",
                    "--rounds", "1", "--streams", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| raw", "| bare"))]
    assert "writes streams" in out and [r[1].strip() for r in rows] == ["raw", "bare"], out


def test_streams_refuses_unknown_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown kind or variant is a usage error that names it; so is ``--top`` without
    ``--bytecodes`` (nothing to list)."""
    from benchmarks.streams import main as streams

    with pytest.raises(SystemExit) as exc:
        streams(["--kinds", "server,duplex"])
    assert exc.value.code == 2 and "'duplex'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        streams(["--top", "5"])
    assert exc.value.code == 2 and "--top needs --bytecodes" in capsys.readouterr().err


def _work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_opcode_counting_counts_the_bytecodes_of_the_functions_it_traces() -> None:
    """``benchmarks.opcodes``' tracer set ``frame.f_trace_opcodes`` in each frame's
    ``call`` event. From Python 3.12 (PEP 669 under sys.settrace) opcode events follow
    the frame that called settrace and a frame's f_trace set before its flag
    (python/cpython#103615, #114480): on 3.12.1 nothing was counted (0 bytecodes per
    call, and ``benchmarks.streams --bytecodes`` 0 per message), on 3.13.0 a traced
    call's own frame was missed. Counted on every supported Python now (``_work``'s loop
    is over 50 bytecodes)."""
    import collections

    from benchmarks.opcodes import _counting

    ops: collections.Counter[Any] = collections.Counter()
    entered: collections.Counter[Any] = collections.Counter()
    with _counting(ops, entered):
        _work(50)
    names = {code.co_name: n for code, n in ops.items()}
    assert entered and names.get("_work", 0) > 50, names
