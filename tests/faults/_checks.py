"""Checks shared by the scenarios: status-message hygiene, logs, metrics, memory, orders."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from tests.faults._stack import PG_DB, PG_HOST, PG_PORT, PG_USER, StackEnv

# What a status message must never carry: exception classes, file paths, addresses.
_LEAKS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("exception class", re.compile(r"<class |Traceback|\bErrno\b|\b[A-Z]\w*(?:Error|Exception)\b"
                                   r"|\w+\.\w+Error\b|Error:")),
    ("file path", re.compile(r"(?<![\w.])/(?:tmp|work|home|usr|var|etc|root|opt|proc|dev|run|"
                             r"srv|mnt|lib|bin)(?:/[^\s'\",)]*)?"
                             r"|\b[\w.-]+\.(?:py|db|sqlite3?|pem|key|sock|so)\b")),
    ("address", re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\blocalhost:\d+|\[[0-9a-fA-F:]+\]:\d+"
                           r"|\b[\w.-]+:\d{2,5}\b")),
)


def leaks(message: str) -> list[str]:
    """What in a status message ``message`` looks like an internal detail (kinds found)."""
    return [kind for kind, rx in _LEAKS if rx.search(message)]


def leaky_messages(messages: Iterable[str], limit: int = 3) -> list[str]:
    """Up to ``limit`` distinct leaky messages, each prefixed with what it leaks."""
    out: list[str] = []
    for m in dict.fromkeys(messages):
        found = leaks(m)
        if found:
            out.append(f"[{', '.join(found)}] {m[:160]!r}")
            if len(out) >= limit:
                break
    return out


# -- logs -------------------------------------------------------------------------------
def log_events(path: Path) -> list[dict[str, object]]:
    """The JSON log lines of a service's log file (other lines skipped)."""
    out: list[dict[str, object]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def count_events(path: Path, event: str, **fields: object) -> int:
    """How many log lines of ``path`` have ``event`` and every ``fields`` value."""
    return sum(1 for e in log_events(path)
               if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()))


def warnings_of(path: Path, *words: str) -> list[dict[str, object]]:
    """Log lines at warning level or above whose event mentions one of ``words``
    (case-insensitive; any event if none given), access-log lines excluded."""
    lowered = [w.lower() for w in words]
    return [e for e in log_events(path)
            if e.get("level") in ("warning", "error", "critical")
            and e.get("event") != "rpc"
            and (not lowered or any(w in str(e.get("event", "")).lower() for w in lowered))]


# -- metrics ----------------------------------------------------------------------------
async def scrape(admin_port: str | int) -> str:
    """The Prometheus text of an admin server (bounded to 5 s)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        return await resp.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


# -- memory -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory of a process, MiB: now and the peak so far (VmHWM)."""

    rss_mib: float
    peak_mib: float


def memory(pid: int) -> Memory:
    """Read ``/proc/<pid>/status``."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return Memory(fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0))


# -- orders -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrderAudit:
    """Acknowledged orders against the stored ones."""

    acked: int
    stored: int
    lost: int
    duplicated_keys: int
    lost_examples: tuple[str, ...]


async def stored_orders(env: StackEnv) -> list[tuple[str | None, str]]:
    """``(idempotency_key, order id)`` of every order in orderd's database, read directly."""
    if env.pg_schema is not None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER,
                                     database=PG_DB, timeout=5)
        try:
            rows = await conn.fetch(
                f'SELECT idempotency_key, id FROM "{env.pg_schema}".orders', timeout=10)
        finally:
            await conn.close()
        return [(r[0], r[1]) for r in rows]
    path = env.workdir / "orderd.db"
    conn2 = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [(r[0], r[1]) for r in conn2.execute("SELECT idempotency_key, id FROM orders")]
    finally:
        conn2.close()


def audit(acked: dict[str, str], stored: list[tuple[str | None, str]]) -> OrderAudit:
    """Compare acknowledged ``key -> order id`` with the stored rows."""
    by_key: dict[str, set[str]] = {}
    for key, oid in stored:
        if key:
            by_key.setdefault(key, set()).add(oid)
    lost = [k for k, oid in acked.items() if oid not in by_key.get(k, set())]
    keys = Counter(k for k, _ in stored if k)
    return OrderAudit(acked=len(acked), stored=len(stored), lost=len(lost),
                      duplicated_keys=sum(1 for n in keys.values() if n > 1),
                      lost_examples=tuple(lost[:3]))
