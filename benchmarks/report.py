"""Turning results into words: the targets and whether they are met, text tables, Markdown
tables (for ``benchmarks/RESULTS.md``) and PNG charts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["REFERENCE_RAW", "machine_note", "markdown", "plot", "print_scenario",
           "print_targets", "targets"]


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


REFERENCE_RAW = {"qps": 6355.0, "cpu_us_per_call": 264.1, "cpu": "AMD EPYC",
                 "run": "2026-12-04 03:03 UTC on a quiet VM, benchmarks/RESULTS.md"}
"""Raw grpc.aio at concurrency 32 in the quiet run RESULTS.md reads the targets against:
QPS and client + server CPU microseconds per call, and the processor it ran on (a part
of its model name)."""

_SPEED_MARGIN = 1.3  # a run whose raw CPU per call is off the reference by more is flagged


def machine_note(results: dict[str, Any]) -> str | None:
    """How fast this run's machine ran raw grpc.aio at concurrency 32 against
    :data:`REFERENCE_RAW`, with a warning when it was more than 1.3x slower or faster;
    ``None`` when the overhead scenario did not run at concurrency 32.

    On a slower machine grpc's own work (C-core, system calls) grows more than the mesh's
    Python (2026-12-04: raw's CPU per call 2.66x the reference, ``full``'s added CPU 1.36x),
    so the QPS-ratio targets read high there, and the microsecond targets read high too
    (the mesh's added microseconds grow, if less than grpc's: that slow VM's ``full`` added
    277.72 us of CPU against 203.80, ``defaults`` +169 us p50 against +66); on a faster
    machine both read low. A run on
    another event loop (``--loop uvloop``) gets the figures without the check. A machine
    whose processor is not the reference's (``results["machine"]["cpu"]``) is named: its
    speed factor is the processor's as much as the load's (2026-12-04, an Intel Xeon VM
    ran raw at 1.22-1.26x the reference's CPU per call, unloaded, and `full` added more
    than on the reference's AMD EPYC)."""
    raw = _get(results, "scenarios", "overhead", "by_concurrency", "32", "raw")
    if not isinstance(raw, dict) or not raw.get("qps"):
        return None
    cpu = (raw["client_cpu_s_per_1k"] + raw["server_cpu_s_per_1k"]) * 1000
    ref = REFERENCE_RAW
    factor = cpu / ref["cpu_us_per_call"]
    note = (f"raw grpc.aio at concurrency 32 here: {raw['qps']:,.0f} QPS, {cpu:.1f} us of "
            f"client + server CPU per call; the reference run ({ref['run']}): "
            f"{ref['qps']:,.0f} QPS, {ref['cpu_us_per_call']:.1f} us")
    model = _get(results, "machine", "cpu")
    if isinstance(model, str) and model and str(ref["cpu"]) not in model:
        note += (f"; this machine's processor ({model}) is not the reference's "
                 f"({ref['cpu']}): the factor below is the processor's as well as the load's")
    if results.get("loop", "asyncio") != "asyncio":
        # the reference ran on asyncio's loop; another loop changes grpc.aio's own cost
        return note + f" (on asyncio's loop; this run's was {results['loop']}'s: no speed check)"
    if factor > _SPEED_MARGIN or factor < 1 / _SPEED_MARGIN:
        note += (f".\nWARNING: grpc ran {factor:.2f}x the reference's CPU per call on this "
                 "machine: the QPS-ratio targets read "
                 f"{'high' if factor > 1 else 'low'} and the microsecond targets "
                 f"{'high' if factor > 1 else 'low'} here; do not read them as met or missed "
                 "against the reference")
    return note


def _failed(label: str, row: Any) -> str | None:
    """``"'defaults' failed 12 of 9,000 calls (UNAVAILABLE 10, INTERNAL 2)"`` when the
    contender summary ``row`` (``summarize``'s, or a slow-replica row) counted errors,
    else ``None``."""
    if not isinstance(row, dict) or not row.get("errors"):
        return None
    by = row.get("errors_by_status") or {}
    codes = ", ".join(f"{k} {v:,}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
    return (f"{label!r} failed {row['errors']:,} of {row.get('calls', 0):,} calls"
            + (f" ({codes})" if codes else ""))


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured value and whether each is met.

    Each row has ``target``, ``goal``, ``value``, ``unit`` and ``met``: ``True``/``False``,
    or ``None`` when not measured in this run. A throughput or latency target is judged on
    successful calls only, so when the contender it is about failed calls it is **not
    met** (``met=False``), and when only its baseline did (``raw``, ``hand``,
    ``p2c-healthy``) the comparison is not trusted (``met=None``); such rows carry a
    ``note`` naming the failed calls by status code. A convergence target (join, leave)
    whose contender failed calls in its rounds is not met either, with such a note.
    """
    sc = results.get("scenarios", {})
    rows: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: Any, ok: Callable[[Any], bool], unit: str = "",
            *, contender: tuple[str, Any] | None = None,
            baseline: tuple[str, Any] | None = None) -> None:
        row = {"target": name, "goal": goal, "value": value, "unit": unit,
               "met": None if value is None else bool(ok(value))}
        mine = _failed(*contender) if contender is not None else None
        theirs = _failed(*baseline) if baseline is not None else None
        if mine is not None:
            row["met"] = False
            row["note"] = mine + (f"; baseline {theirs}" if theirs else "")
        elif theirs is not None:
            row["met"] = None
            row["note"] = f"baseline {theirs}"
        rows.append(row)

    ov = sc.get("overhead", {})

    def overhead(conc: str, name: str) -> dict[str, Any]:
        return {"contender": (name, _get(ov, "by_concurrency", conc, name)),
                "baseline": ("raw", _get(ov, "by_concurrency", conc, "raw"))}

    add("defaults (dial()/serve() as shipped) QPS vs raw grpc.aio, concurrency 32", ">= 0.90x",
        _get(ov, "by_concurrency", "32", "defaults", "qps_ratio"), lambda v: v >= 0.90, "x",
        **overhead("32", "defaults"))
    add("defaults added p50, concurrency 1", "<= 60 us",
        _get(ov, "by_concurrency", "1", "defaults", "added_p50_us"), lambda v: v <= 60, "us",
        **overhead("1", "defaults"))
    add("full-1pct (full, 1 % traced) QPS vs raw, concurrency 32", ">= 0.80x",
        _get(ov, "by_concurrency", "32", "full-1pct", "qps_ratio"), lambda v: v >= 0.80, "x",
        **overhead("32", "full-1pct"))
    add("full (100 % traced) QPS vs raw, concurrency 32", ">= 0.70x",
        _get(ov, "by_concurrency", "32", "full", "qps_ratio"), lambda v: v >= 0.70, "x",
        **overhead("32", "full"))
    add("full: CPU added per call, client + server, concurrency 32", "<= 200 us",
        _get(ov, "by_concurrency", "32", "full", "added_cpu_us_per_call"),
        lambda v: v <= 200, "us", **overhead("32", "full"))
    cmp_ = sc.get("compare", {})
    add("full stack QPS vs hand-assembled stack, concurrency 32", ">= 1.5x",
        _get(cmp_, "by_concurrency", "32", "full", "qps_ratio_vs_hand"),
        lambda v: v >= 1.5, "x",
        contender=("full", _get(cmp_, "by_concurrency", "32", "full")),
        baseline=("hand", _get(cmp_, "by_concurrency", "32", "hand")))
    sr = sc.get("slow_replica", {})
    p2c = ("p2c", _get(sr, "contenders", "p2c"))
    add("slow replica: P2C/EWMA p99 vs all-healthy p99", "<= 2x",
        _get(sr, "p2c_p99_vs_healthy"), lambda v: v <= 2.0, "x", contender=p2c,
        baseline=("p2c-healthy", _get(sr, "contenders", "p2c-healthy")))
    add("slow replica: its share of calls under P2C/EWMA", "< 2 %",
        None if _get(sr, "contenders", "p2c", "slow_share") is None
        else _get(sr, "contenders", "p2c", "slow_share") * 100, lambda v: v < 2.0, "%",
        contender=p2c)
    fo = _get(sc, "failover", "contenders", "default") or {}
    add("failover: failed calls (meshkit defaults)", "0", fo.get("failed_calls"),
        lambda v: v == 0)
    if fo:
        bal, unbalanced, unmeasured = _balance(fo)
        if unbalanced:  # a measured round never balanced: missed, whatever the others
            rows.append({"target": "failover: balanced again after SIGKILL",
                         "goal": "<= 1 s", "value": "not within the observation",
                         "unit": "s", "met": False})
        elif unmeasured:  # judged against a pre-kill rate it did not measure
            rows.append({"target": "failover: balanced again after SIGKILL",
                         "goal": "<= 1 s", "value": f"not measured: {unmeasured} round(s) "
                         "served no call before the kill", "unit": "", "met": None})
        else:
            rows.append({"target": "failover: balanced again after SIGKILL",
                         "goal": "<= 1 s", "value": bal, "unit": "s",
                         "met": bal is not None and bal <= 1.0})
    else:
        add("failover: balanced again after SIGKILL", "<= 1 s", None, lambda v: True, "s")
    cv = _get(sc, "convergence", "contenders") or {}
    for reg, label in (("local", "local registry"), ("etcd", "etcd registry, real"),
                       ("consul", "Consul registry, test double")):
        row = cv.get(f"{reg}-p2c")
        for key, what in (("join_s_max", "new instance serving"),
                          ("leave_s_max", "drained instance's last new call")):
            name = f"convergence ({label}, defaults): {what}"
            if row is None:
                add(name, "<= 1 s", None, lambda v: True, "s")
                continue
            v = row.get(key)
            if key == "leave_s_max" and v is None:  # it never served: nothing to drain
                rows.append({"target": name, "goal": "<= 1 s",
                             "value": "not measured: the new instance never served",
                             "unit": "", "met": None})
                continue
            target = {"target": name, "goal": "<= 1 s",
                      "value": v if v is not None else "never", "unit": "s",
                      "met": v is not None and v <= 1.0}
            failed = _convergence_failed(f"{reg}-p2c", row)
            if failed is not None:  # read off served calls while others failed: not met
                target["met"] = False
                target["note"] = failed
            rows.append(target)
    return rows


def _balance(s: dict[str, Any]) -> tuple[float | None, int, int]:
    """A failover contender's ``balanced_after_s_max`` (over its measured rounds), its
    rounds never balanced and its rounds not measured (no call served before the kill).
    Results written before ``unbalanced_rounds`` existed read ``None`` as never
    balanced, unless rounds were not measured (their ``None`` then says nothing)."""
    bal = s.get("balanced_after_s_max")
    unmeasured = int(s.get("unmeasured_rounds") or 0)
    unbalanced = s.get("unbalanced_rounds")
    if unbalanced is None:
        unbalanced = 1 if bal is None and not unmeasured else 0
    return bal, int(unbalanced), unmeasured


def _convergence_failed(label: str, row: dict[str, Any]) -> str | None:
    """``"'local-p2c' failed 7 calls (UNAVAILABLE)"`` when the convergence contender
    ``row`` had failed calls in its rounds (their status codes, from each round's
    ``failed_codes``), else ``None``."""
    n = row.get("failed_calls") or 0
    if not n:
        return None
    codes = sorted({c for r in row.get("rounds") or [] for c in r.get("failed_codes") or []})
    return f"{label!r} failed {n:,} calls" + (f" ({', '.join(codes)})" if codes else "")


def _ratio(value: Any) -> Any:
    """A ratio cell with three decimals, as the targets read it (0.94x is not '1.0', nor
    0.86x '0.9' against a 0.90x goal); ``None`` stays ``None``."""
    return f"{value:.3f}" if isinstance(value, float | int) else value


def _ratio_spread(row: dict[str, Any], key: str) -> Any:
    """``row[key]`` as ``"1.297 (1.21-1.42)"`` when its per-round range is known."""
    value, spread = row.get(key), row.get(f"{key}_range")
    if value is None or not spread:
        return value
    return f"{value:.3f} ({spread[0]:.2f}-{spread[1]:.2f})"


def _digits(target: dict[str, Any]) -> int:
    """Decimals for a target's measured value: ratios get 3, so one just under its goal
    (1.297x against >= 1.3x) does not print as the goal itself."""
    return 3 if target["unit"] == "x" else 2


def _measured(target: dict[str, Any]) -> str:
    """A target's measured value with its unit, or ``-``."""
    if target["value"] is None:
        return "-"
    return f"{_fmt(target['value'], _digits(target))} {target['unit']}".strip()


def _status(target: dict[str, Any], missed: str) -> str:
    """A target's status (``met``, ``missed``, ``not measured``), with its note if any."""
    status = {True: "met", False: missed, None: "not measured"}[target["met"]]
    note = target.get("note")
    return f"{status} ({note})" if note else status


def _fmt(v: Any, digits: int = 1) -> str:
    """A table cell or measured value: ``-`` for ``None``, a float with ``digits``
    decimals (thousands grouped, no decimals, from 1,000), never a negative zero (a
    -0.001 s reads 0.00, not -0.00)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.,") else text
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def _overhead_rows(res: dict[str, Any], conc: str) -> list[list[Any]]:
    rss = {c["name"]: c for c in res.get("contenders", [])}
    rows = []
    for name, s in res["by_concurrency"][conc].items():
        c = rss.get(name, {})
        rows.append([name, s["qps"], _ratio(s.get("qps_ratio")), s["p50_us"],
                     s.get("added_p50_us"),
                     s["p99_us"], _ms(s["client_cpu_s_per_1k"]),
                     _ms(s["server_cpu_s_per_1k"]),
                     _mib(c.get("server_peak_rss_kb")), _mib(c.get("client_peak_rss_kb")),
                     _errors(s)])
    return rows


def _mib(kib: Any) -> float | None:
    """A peak RSS in KiB as MiB; unknown (``None``: the process gone, no ``/proc``) stays
    ``None`` and prints ``-``, not 0.0."""
    return kib / 1024 if isinstance(kib, int | float) else None


def _ms(seconds: float | None) -> float | None:
    """CPU seconds per 1000 calls as milliseconds; ``None`` (no call served) stays
    ``None`` and prints ``-``."""
    return None if seconds is None else seconds * 1000


def _errors(s: dict[str, Any]) -> Any:
    """A contender's error count, with its status codes when there were any
    (``12 (UNAVAILABLE 10, INTERNAL 2)``)."""
    by = s.get("errors_by_status")
    if not s["errors"] or not by:
        return s["errors"]
    codes = ", ".join(f"{k} {v}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
    return f"{s['errors']} ({codes})"


_OVERHEAD_HEADERS = ["contender", "QPS", "x raw", "p50 us", "+p50 us", "p99 us",
                     "cli CPU ms/1k", "srv CPU ms/1k", "srv RSS MiB", "cli RSS MiB", "errors"]


def scenario_tables(name: str, res: dict[str, Any]) -> list[tuple[str, list[str],
                                                                  list[list[Any]]]]:
    """``(title, headers, rows)`` tables of one scenario's results."""
    out: list[tuple[str, list[str], list[list[Any]]]] = []
    if name == "overhead":
        for conc in res["by_concurrency"]:
            out.append((f"Overhead by layer, concurrency {conc} (medians of {res['rounds']} "
                        f"interleaved rounds of {res['round_s']} s; CPU is ms per 1000 calls)",
                        _OVERHEAD_HEADERS, _overhead_rows(res, conc)))
    elif name == "compare":
        for conc, rows in res["by_concurrency"].items():
            table = []
            for n, s in rows.items():
                table.append([n, s["qps"], _ratio(s.get("qps_ratio")),
                              _ratio_spread(s, "qps_ratio_vs_hand"),
                              _ratio(s.get("qps_ratio_vs_hand-notrace")), s["p50_us"],
                              s["p99_us"],
                              _ms(s["client_cpu_s_per_1k"]), _ms(s["server_cpu_s_per_1k"]),
                              _errors(s)])
            rounds = (f"{res['rounds']} interleaved rounds of {res['round_s']} s; "
                      if "rounds" in res else "")
            out.append((f"Against the hand-assembled stack, concurrency {conc} ({rounds}x hand: "
                        f"median of per-round ratios, lowest-highest round in brackets)",
                        ["contender", "QPS", "x raw", "x hand", "x hand-notrace", "p50 us",
                         "p99 us", "cli CPU ms/1k", "srv CPU ms/1k", "errors"], table))
    elif name == "slow_replica":
        table = []
        for n, s in res["contenders"].items():
            shares = ", ".join(f"{k} {v * 100:.1f}%" for k, v in s["shares"].items())
            table.append([n, s["service"], s["qps"], s["p50_us"], s["p99_us"],
                          s["slow_share"] * 100, s["errors"], shares])
        out.append((f"Slow replica ({res['delay_ms']:.0f} ms slower), concurrency "
                    f"{res['concurrency']}, {res['rounds']} rounds of {res['round_s']} s",
                    ["contender", "service", "QPS", "p50 us", "p99 us", "slow share %",
                     "errors", "shares"], table))
    elif name == "failover":
        table = []
        for n, s in res["contenders"].items():
            bal, unbalanced, unmeasured = _balance(s)
            table.append([n, len(s["rounds"]), s["failed_calls"], s["extra_p99_us"],
                          s["extra_max_us"],
                          "not balanced" if unbalanced else "not measured" if bal is None
                          else f"{_fmt(bal)} ({unmeasured} round(s) not measured)"
                          if unmeasured else bal,
                          f"{s['unbalanced_share_before'] * 100:.0f}% / "
                          f"{s['unbalanced_share_after'] * 100:.0f}%",
                          ", ".join(r["victim"] for r in s["rounds"])])
        out.append((f"Failover: SIGKILL 1 of 3 replicas under load (concurrency "
                    f"{res['concurrency']}; balanced = first 0.5 s of balanced 100 ms windows)",
                    ["contender", "kills", "failed calls", "extra p99 us", "extra max us",
                     "balanced after s (max)", "unbalanced windows before/after",
                     "victims"], table))
    elif name == "convergence":
        table = []
        for n, s in res["contenders"].items():
            table.append([n, s.get("registry_label", s["registry"]), len(s["rounds"]),
                          s["join_s_max"] if s["join_s_max"] is not None else "never",
                          s["join_s_median"],
                          s["leave_s_max"] if s["leave_s_max"] is not None else "-",
                          s["leave_s_median"], s.get("never_served", 0), s["failed_calls"]])
        out.append(("Discovery convergence (seconds; join: registered -> first served call; "
                    "leave: SIGTERM -> last call started on it)",
                    ["contender", "registry", "rounds", "join max", "join median", "leave max",
                     "leave median", "never served", "failed calls"], table))
    elif name == "fanout":
        costs = res["pick_us"]
        sizes = list(costs)
        table = [[b, *(costs[s][b] for s in sizes)] for b in costs[sizes[0]]]
        out.append((f"Fan-out: pick()+done() cost, us per call ({res['timeit']['statistic']} "
                    f"of {res['timeit']['repeat']} x {res['timeit']['number']})",
                    ["balancer", *(f"{s} endpoints" for s in sizes)], table))
        mem = res["memory"]
        out.append((f"Fan-out: memory per endpoint ({res['endpoints']} instances on "
                    f"{mem['real_servers']} real servers; tracemalloc and VmRSS)",
                    ["measure", "small", "big", "per endpoint"],
                    [["python bytes (tracemalloc)", mem["small"]["python_bytes"],
                      mem["big"]["python_bytes"], mem["python_bytes_per_endpoint"]],
                     ["RSS KiB / bytes per endpoint", mem["small"]["rss_kb"],
                      mem["big"]["rss_kb"], mem["rss_bytes_per_endpoint"]]]))
    return out


def print_scenario(name: str, res: dict[str, Any]) -> None:
    """Print a scenario's tables."""
    for title, headers, rows in scenario_tables(name, res):
        print(f"\n{title}\n{_table(headers, rows)}", flush=True)


def print_targets(rows: list[dict[str, Any]], note: str | None = None) -> None:
    """Print the target table, then ``note`` (:func:`machine_note`) when given."""
    table = [[r["target"], r["goal"], _measured(r), _status(r, "MISSED")] for r in rows]
    print(f"\nTargets\n{_table(['target', 'goal', 'measured', 'status'], table)}", flush=True)
    if note:
        print(note, flush=True)


def markdown(results: dict[str, Any]) -> str:
    """Every table of ``results`` as Markdown (for ``benchmarks/RESULTS.md``): the targets,
    the machine note, the scenarios that failed (``errors``) and the run's notes (what was
    skipped and why), then each scenario's tables."""

    def md(headers: list[str], rows: list[list[Any]]) -> str:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
        for r in rows:
            lines.append("| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in r)
                         + " |")
        return "\n".join(lines)

    parts = []
    rows = [[r["target"], r["goal"], _measured(r), _status(r, "**missed**")]
            for r in results.get("targets", [])]
    parts.append("### Targets\n\n" + md(["target", "goal", "measured", "status"], rows))
    note = machine_note(results)
    if note:
        parts.append(note.replace("\n", "\n\n"))
    errors = results.get("errors") or {}
    if errors:  # a failed scenario has no tables: say why, as the printed run does
        parts.append("### Scenarios that failed\n\n" + "\n".join(
            f"* `{name}`: " + " / ".join(x.strip() for x in str(err).splitlines() if x.strip())
            for name, err in errors.items()))
    notes = results.get("notes") or []
    if notes:
        parts.append("### Notes\n\n" + "\n".join(f"* {n}" for n in notes))
    for name, res in results.get("scenarios", {}).items():
        for title, headers, trows in scenario_tables(name, res):
            parts.append(f"### {title}\n\n" + md(headers, trows))
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """PNG charts: QPS and p99 by layer (per concurrency), and replica shares.

    Returns:
        The files written (none when matplotlib is missing or nothing to draw).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  note: matplotlib is not installed; no charts", flush=True)
        return []
    written: list[Path] = []
    ov = _get(results, "scenarios", "overhead")
    if ov:
        concs = list(ov["by_concurrency"])
        fig, axes = plt.subplots(2, len(concs), figsize=(6 * len(concs), 8), squeeze=False)
        for j, conc in enumerate(concs):
            data = ov["by_concurrency"][conc]
            names = list(data)
            for i, (key, label) in enumerate((("qps", "QPS"), ("p99_us", "p99 (us)"))):
                ax = axes[i][j]
                vals = [data[n][key] or 0.0 for n in names]  # None: no call succeeded
                colors = ["#888888" if n == "raw" else "#1f77b4" if n.startswith("+")
                          else "#d62728" for n in names]
                ax.barh(names, vals, color=colors)
                ax.invert_yaxis()
                ax.set_title(f"{label}, concurrency {conc}")
                for y, v in enumerate(vals):
                    ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        fig.suptitle("meshkit overhead by layer (unary, 64 B, loopback)")
        fig.tight_layout()
        path = out_dir / f"{stem}-overhead.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    sr = _get(results, "scenarios", "slow_replica")
    if sr:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(sr["contenders"])
        tags = sorted({t for n in names for t in sr["contenders"][n]["shares"]})
        left = [0.0] * len(names)
        for tag in tags:
            vals = [sr["contenders"][n]["shares"].get(tag, 0.0) * 100 for n in names]
            ax.barh(names, vals, left=left, label=tag,
                    color="#d62728" if tag == sr["slow_instance"] else None)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel("share of calls (%)")
        ax.set_title(f"Replica shares; {sr['slow_instance']} is {sr['delay_ms']:.0f} ms slower")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out_dir / f"{stem}-replicas.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
