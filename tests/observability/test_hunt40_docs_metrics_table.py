"""README (Observability, Metrics): every metric of its table is on a serving and dialing
process's ``/metrics``, with the type the table gives. Pins the table to the exposition:
a metric renamed, retyped or dropped fails here, not in a user's dashboard."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest

import meshkit
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parents[2] / "README.md"


def _table() -> list[tuple[str, str]]:
    """(metric name, type) of each row; the ``{server,client}``/``{received,sent}``
    row expanded."""
    text = README.read_text(encoding="utf-8")
    table = text.split("| name | type | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for name, kind in re.findall(r"^\| `([^`]+)` \| (\w+) \|", table, re.M):
        if name == "grpc_{server,client}_msg_{received,sent}_total":
            rows += [
                (f"grpc_{s}_msg_{d}_total", kind)
                for s in ("server", "client")
                for d in ("received", "sent")
            ]
        else:
            rows.append((name, kind))
    return rows


async def test_every_metric_of_the_readme_table_is_exposed(tmp_path: Path) -> None:
    rows = _table()
    assert len(rows) >= 40, rows
    registry = f"local://{tmp_path / 'registry'}"
    server = meshkit.MeshServer(
        "tablesvc", [add_echo("t1")], registry=registry, options=meshkit.ServeOptions(insecure=True)
    )
    await server.start()
    try:
        async with meshkit.dial(
            "tablesvc", registry=registry, options=meshkit.DialOptions(insecure=True)
        ) as ch:
            await ch.unary_unary(method("Unary"))(b"x", timeout=5)
            admin = server.stats().admin
            assert admin is not None
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"{admin}/metrics", timeout=10).read().decode()
            )
    finally:
        await server.drain()
    types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", body, re.M))
    wrong = []
    for name, kind in rows:
        # prometheus-client's text format names a counter's family without "_total"
        got = types.get(name, types.get(name.removesuffix("_total")))
        if got != kind:
            wrong.append((name, kind, got))
    assert not wrong, wrong
