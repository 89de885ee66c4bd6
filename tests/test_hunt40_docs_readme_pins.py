"""README.md and benchmarks/README.md as a new user reads them: every command line they
show names options its command takes, every ``MESHKIT_*`` variable they document is read
by some code, the defaults they state are the code's, and the package docstring names
the packages where their contents are.

Each command's options come from its own ``--help`` (a subprocess each, run together), so
a renamed or removed flag fails here instead of in a user's shell."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/README.md")

# the commands whose options the docs show: (first words as written, argv of its --help)
MESHKIT_COMMANDS = (
    "certs init",
    "certs issue",
    "certs inspect",
    "services",
    "call",
    "prometheus-targets",
    "demo",
    "bench",
    "version",
)


def _text(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


# the example services the README documents flags of
EXAMPLE_PROCESSES = [
    (f"examples.ecom.{m}", "--help")
    for m in ("user_service", "order_service", "projection_service", "outbox_relay")
]
NOT_OURS = {"--dist", "--max-worker-restart"}  # pytest-xdist's, in what `make test` runs


def _spans(name: str) -> list[str]:
    """The inline code spans of document ``name``, whitespace folded."""
    prose = re.sub(r"```.*?```", "", _text(name), flags=re.S)  # a fence pairs no span
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def _command_lines() -> list[tuple[str, str]]:
    """(document, command line) for every ``meshkit ...`` / ``python -m benchmarks...``
    line of a ``sh`` block and every inline code span holding one (wrapped spans joined,
    comments and ``[...]`` optional brackets dropped)."""
    found: list[tuple[str, str]] = []
    for name in DOCS:
        text = _text(name)
        for body in re.findall(r"```sh\n(.*?)```", text, re.S):
            for line in body.splitlines():
                found.append((name, line.split("  #")[0].strip()))
        found += [(name, span) for span in _spans(name)]
        for args in re.findall(r'DEMO_ARGS="([^"]*)"', text):
            found.append((name, f"meshkit demo {args}"))
    lines = []
    for name, line in found:
        line = line.replace("[", " ").replace("]", " ")
        if re.match(
            r"(meshkit|python -m (benchmarks|examples)(\.\w+)*|benchmarks\.\w+) ", line + " "
        ):
            lines.append((name, " ".join(line.split())))
    return lines


def _which(line: str) -> tuple[str, ...] | None:
    """The ``python -m`` argv of the ``--help`` of the command ``line`` runs, or None
    when it is no command with options (``meshkit.run``...)."""
    words = line.split()
    if words[0] == "meshkit":
        rest = " ".join(words[1:3])
        for cmd in sorted(MESHKIT_COMMANDS, key=len, reverse=True):
            if rest == cmd or rest.startswith(cmd + " "):
                return ("meshkit.cli", *cmd.split(), "--help")
        return None
    module = words[2] if words[0] == "python" else words[0]
    return (module, "--help")


def _flags(line: str) -> set[str]:
    line = line.removeprefix("python -m ")
    return {
        w.split("=")[0] for w in line.split() if re.fullmatch(r"--?[a-zA-Z][-a-zA-Z]*(=\S*)?", w)
    }


# one interpreter runs every --help (as ``python -m MODULE --help`` runs it), so the
# modules they share are imported once
_HELPS = """
import contextlib, io, json, runpy, sys
out = {}
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    sys.argv = [argv[0], *argv[1:]]
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            assert exc.code in (0, None), (argv, exc.code)
    out[" ".join(argv)] = buf.getvalue()
print(json.dumps(out))
"""


def _helps(argvs: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Each ``python -m MODULE ARGS --help``'s output (argv without the ``-m``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _HELPS, json.dumps(argvs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    return {argv: out[" ".join(argv)] for argv in argvs}


def test_every_command_line_in_the_docs_uses_options_its_command_takes() -> None:
    uses: dict[tuple[str, ...], set[tuple[str, str, str]]] = {}
    for doc, line in _command_lines():
        argv = _which(line)
        if argv is None:
            continue
        uses.setdefault(argv, set()).update((doc, line, f) for f in _flags(line))
    # the blocks the README and benchmarks/README show are all there
    assert ("meshkit.cli", "certs", "issue", "--help") in uses
    assert ("benchmarks.streams", "--help") in uses
    helps = _helps(sorted({*uses, *EXAMPLE_PROCESSES}))
    missing = []
    for argv, flags in uses.items():
        taken = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][-a-zA-Z]*)", helps[argv]))
        missing += [(doc, line, flag) for doc, line, flag in sorted(flags) if flag not in taken]
    assert not missing, missing
    # a flag the prose names on its own (`--keep-failing-s`, `--user-cache memory://`) is
    # one of those commands' or the example services' own
    taken = set()
    for out in helps.values():
        taken |= set(re.findall(r"(?<![\w-])(--[a-zA-Z][-a-zA-Z]*)", out))
    bare = {(doc, span) for doc in DOCS for span in _spans(doc) if span.startswith("--")}
    unknown = sorted(
        (doc, span) for doc, span in bare if span.split()[0].split("=")[0] not in taken | NOT_OURS
    )
    assert not unknown, unknown


def test_every_documented_meshkit_variable_is_read() -> None:
    documented = set()
    for name in DOCS:
        documented |= set(re.findall(r"\bMESHKIT_[A-Z][A-Z0-9_]*[A-Z0-9]", _text(name)))
    assert {"MESHKIT_REGISTRY", "MESHKIT_CERT_DIR", "MESHKIT_LOG_LEVEL"} <= documented
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for top in ("meshkit", "examples", "benchmarks")
        for p in (REPO / top).rglob("*.py")
    )
    code += (REPO / "tests" / "conftest.py").read_text(encoding="utf-8")  # MESHKIT_TEST_LOOP
    unread = sorted(v for v in documented if not re.search(rf"""["']{v}["']|\b{v}\b\s*=""", code))
    assert not unread, unread


def _limits_table() -> dict[str, str]:
    """``ServerLimits`` field -> the README's "default" cell of "Limits and failure modes"."""
    section = _text("README.md").split("**Bounded work by default**", 1)[1]
    rows = {}
    for line in section.split("\n\n", 2)[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"^`(\w+)`(?: / `(\w+)`)?", cells[0])
        if len(cells) >= 2 and names:
            defaults = cells[1].split(" / ")
            for name, default in zip([n for n in names[0] if n], defaults, strict=True):
                rows[name] = default
    return rows


def _reads(cell: str) -> object:
    """The README's spelling of a default as the value it stands for."""
    cell = re.sub(r"\s*\(.*\)$", "", cell)  # "4 MiB (grpc's)", "10 s (gRPC's: 300 s)"
    if cell == "off":
        return False
    number, _, unit = cell.partition(" ")
    scale = {"": 1, "s": 1, "MiB": 1 << 20}[unit]
    return float(number) * scale


def test_the_limits_table_states_the_server_limits_defaults() -> None:
    from meshkit import ServerLimits

    table = _limits_table()
    assert len(table) >= 12, table
    fields = {f.name for f in dataclasses.fields(ServerLimits)}
    assert set(table) <= fields, set(table) - fields
    limits = ServerLimits()
    wrong = {
        name: (cell, getattr(limits, name))
        for name, cell in table.items()
        if _reads(cell) != getattr(limits, name)
    }
    assert not wrong, wrong


def _says(pattern: str, doc: str = "README.md") -> re.Match[str]:
    text = " ".join(_text(doc).split())
    match = re.search(pattern, text)
    assert match is not None, f"{doc} no longer says {pattern!r}"
    return match


def test_the_stated_policy_and_option_defaults_are_the_codes() -> None:
    """Defaults the README states in prose, each read back from where it says it."""
    from meshkit import DialOptions, ServeOptions
    from meshkit.balancer import P2COptions, RingHash
    from meshkit.discovery import LocalOptions
    from meshkit.discovery._consul import ConsulOptions
    from meshkit.discovery._etcd import EtcdOptions
    from meshkit.observability import TelemetryOptions
    from meshkit.resilience import RetryPolicy
    from meshkit.resilience._budget import BudgetOptions

    p2c = _says(r"\| decay (\d+) s, default RTT (\d+) ms, slow start (\d+) s \|")
    assert P2COptions().decay_s == float(p2c[1])
    assert P2COptions().default_rtt_s == float(p2c[2]) / 1000
    assert P2COptions().slow_start_s == float(p2c[3])
    retry = _says(
        r"`UNAVAILABLE` only, (\d+) attempts, full-jitter backoff (\d+) ms "
        r"doubling to (\d+) s"
    )
    policy = RetryPolicy()
    assert policy.max_attempts == int(retry[1])
    assert policy.backoff.base_delay_s == float(retry[2]) / 1000
    assert policy.backoff.multiplier == 2.0
    assert policy.backoff.max_delay_s == float(retry[3])
    assert policy.max_pushback_s == float(_says(r"`RetryPolicy.max_pushback_s`, (\d+) s")[1])
    budget = _says(r"retries ≤ (\d+) % of requests \+ (\d+)/s over (\d+) s")
    assert BudgetOptions() == BudgetOptions(
        retry_ratio=float(budget[1]) / 100,
        min_retries_per_s=float(budget[2]),
        ttl_s=float(budget[3]),
    )
    ring = inspect.signature(RingHash).parameters["max_ring_size"].default
    assert ring == int(_says(r"`max_ring_size` = (\d+) points")[1])

    dial = DialOptions()
    assert dial.resolve_timeout_s == float(_says(r"`resolve_timeout_s` \((\d+) s\)")[1])
    assert dial.drain_timeout_s == float(_says(r"`drain_timeout_s` \((\d+) s\) of grace")[1])
    assert dial.keepalive_timeout_s == float(
        _says(r"not acked within `keepalive_timeout_s` \((\d+) s\)")[1]
    )
    assert dial.keepalive_time_s is None  # "off by default, as in gRPC"
    _says(r"\*\*Client keepalive\*\* \(gRFC A8\) is off by default")

    serve = ServeOptions()
    assert serve.drain_delay_s == float(_says(r"for `drain_delay_s` \((\d+) s\)")[1])
    assert serve.grace_s == float(_says(r"in-flight calls get `grace_s` \((\d+) s\)")[1])
    assert serve.readmit_after_s == float(_says(r"`readmit_after_s` \((\d+) s;")[1])
    assert TelemetryOptions().complete_after_response_max_in_flight == int(
        _says(
            r"at most (\d+) calls in flight "
            r"\(`TelemetryOptions.complete_after_response_max_in_flight`\)"
        )[1]
    )

    local = LocalOptions()
    assert local.ttl_s == float(_says(r"within `ttl_s` \((\d+) s\); watchers poll every")[1])
    assert local.poll_interval_s == float(_says(r"watchers poll every ([\d.]+) s")[1])
    etcd = EtcdOptions()
    assert etcd.ttl_s == int(_says(r"`ttl_s` lease TTL, whole seconds \((\d+)\)")[1])
    assert etcd.request_timeout_s == float(_says(r"per request to one member \((\d+) s\)")[1])
    assert etcd.operation_timeout_s == float(_says(r"`operation_timeout_s` \((\d+) s\)")[1])
    assert etcd.connect_timeout_s == float(_says(r"`connect_timeout_s` \((\d+) s\)")[1])
    backoff = _says(
        r"`backoff_base_s`/`backoff_max_s` \(([\d.]+) s / (\d+) s, full\s+jitter\)"
        r" between a watch's retries"
    )
    assert (etcd.backoff_base_s, etcd.backoff_max_s) == (float(backoff[1]), float(backoff[2]))
    assert etcd.prefix == _says(r"`prefix` \(`([^`]+)`\)")[1]
    consul = ConsulOptions()
    assert consul.ttl_s == float(_says(r"`ttl_s` \((\d+) s, renewed every")[1])
    assert consul.check_interval_s == float(_says(r"`check_interval_s` \((\d+) s\)")[1])
    assert consul.deregister_critical_after_s == float(
        _says(r"`deregister_critical_after_s` \((\d+) s;")[1]
    )
    assert consul.wait_s == float(_says(r"`wait_s` of each blocking query \((\d+) s")[1])
    assert consul.request_timeout_s == float(
        _says(
            r"`request_timeout_s` \((\d+) s\); "
            r"`fault_grace_s`"
        )[1]
    )
    assert consul.watch_query_interval_s == float(_says(r"`watch_query_interval_s` \((\d+) s\)")[1])


def test_the_package_docstring_names_each_subpackage() -> None:
    """``help(meshkit)`` lists the packages and what each holds: it named
    ``meshkit.discovery`` as the home of the balancers (they are ``meshkit.balancer``'s)
    and left out ``auth``, ``observability``, ``resilience`` and ``messaging``."""
    import importlib

    import meshkit

    doc = meshkit.__doc__ or ""
    packages = sorted(
        n
        for n in meshkit._SUBPACKAGES
        if n != "messaging" or importlib.util.find_spec("nats") is not None
        if hasattr(importlib.import_module(f"meshkit.{n}"), "__path__")
    )
    named = dict(re.findall(r":mod:`meshkit\.(\w+)`\s*\(([^)]*)\)", doc))
    assert set(packages) <= set(named), set(packages) - set(named)
    # what each is said to hold is there
    from meshkit import balancer, discovery

    assert "balancer" not in named["discovery"], named["discovery"]
    assert hasattr(discovery, "registry_from_uri") and hasattr(balancer, "P2C")


# spans that name only the fields they discuss (the others are required)
PARTIAL = {"ConsumerOptions(dead_letters=True)"}


def test_every_options_expression_in_the_readme_builds() -> None:
    """``DialOptions(keepalive_time_s=30)``, ``ServerLimits(read_requests=False)``,
    ``RetryPolicy(idempotent=True, hedge_delay_s=0.05)``...: each inline expression
    that builds a public class from keyword arguments is evaluated as written."""
    import functools
    import importlib

    names: dict[str, object] = {"functools": functools}
    for module in (
        "meshkit",
        "meshkit.balancer",
        "meshkit.resilience",
        "meshkit.resilience.ratelimit",
        "meshkit.auth",
        "meshkit.observability",
        "meshkit.discovery",
    ):
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            names.setdefault(name, getattr(mod, name))
    built = []
    for span in sorted(set(_spans("README.md")) - PARTIAL):
        match = re.fullmatch(r"([A-Z]\w*)\((.*)\)", span)
        if match is None or "..." in span or not inspect.isclass(names.get(match[1])):
            continue
        if match[2] and not re.match(r"\w+=", match[2]):  # MeshRpcError(CANCELLED): a name
            continue
        eval(span, dict(names))  # the README's own text
        built.append(span)
    assert len(built) >= 15, built
