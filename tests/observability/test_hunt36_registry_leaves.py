"""A registry that leaves the admin server's ``/metrics`` (``remove_registry``: its last
server stopped) while another served registry counts the same series must not make those
series go backwards: they were the sum of both, and a drop reads as a counter reset to
Prometheus (``rate()``/``increase()`` count the remaining value again as new)."""

from __future__ import annotations

import gc
import weakref

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshkit.observability import AdminOptions, AdminServer

_OM = "application/openmetrics-text; version=1.0.0"


async def _scrape(admin: AdminServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, \
            http.get(admin.url + "/metrics", headers={"Accept": _OM}) as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _calls(seen: dict[tuple[str, tuple[tuple[str, str], ...]], float],
           method: str) -> float | None:
    return seen.get(("hunt36_calls_total", (("method", method),)))


def _freed(gone: weakref.ref[CollectorRegistry]) -> None:
    """See the registry ``gone`` refers to freed, its last name deleted: by its reference
    count, else by a full collection (a cycle holds it). A ``gc.collect()`` per registry
    whether needed or not took seconds in a test process holding a suite's objects."""
    if gone() is not None:
        gc.collect()
    assert gone() is None


def _count(seen: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float | None:
    return seen.get(("hunt36_seconds_count", ()))


async def test_a_leaving_registry_leaves_what_it_counted_in_shared_series() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    calls = {r: Counter("hunt36_calls", "Calls.", ["method"], registry=r)
             for r in (first, second)}
    seconds = {r: Histogram("hunt36_seconds", "Time.", buckets=(0.1, 1.0), registry=r)
               for r in (first, second)}
    calls[first].labels("x").inc(3)
    calls[first].labels("only_first").inc(1)
    calls[second].labels("x").inc(5)
    seconds[first].observe(0.05)
    seconds[second].observe(0.5)
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    admin.add_registry(first)
    admin.add_registry(second)
    await admin.start()
    try:
        seen = await _scrape(admin)
        assert _calls(seen, "x") == 8 and _count(seen) == 2
        calls[first].labels("x").inc(1)  # counted after that scrape, before it leaves

        admin.remove_registry(first)
        seen = await _scrape(admin)
        assert _calls(seen, "x") == 9  # was 8 (and 4 of it first's): never below
        assert _count(seen) == 2
        assert seen.get(("hunt36_seconds_bucket", (("le", "0.1"),))) == 1  # cumulative
        assert seen.get(("hunt36_seconds_bucket", (("le", "1.0"),))) == 2
        assert _calls(seen, "only_first") is None  # a series of its own leaves with it

        calls[second].labels("x").inc(2)
        assert _calls(await _scrape(admin), "x") == 11

        admin.add_registry(first)  # back: its own counts hold what it left, not twice
        assert _calls(await _scrape(admin), "x") == 11

        admin.remove_registry(second)
        admin.remove_registry(first)  # no served registry counts x: it leaves
        seen = await _scrape(admin)
        assert _calls(seen, "x") is None and _count(seen) is None
        admin.add_registry(second)  # what left with no one counting it does not return
        assert _calls(await _scrape(admin), "x") == 7
    finally:
        await admin.stop()


async def test_registries_that_left_for_good_are_kept_as_one_entry() -> None:
    """A server replaced at every reload by one with a registry of its own: what each
    left is summed into one entry once its registry is freed (not one per reload), and
    the shared series keeps every count."""
    own = CollectorRegistry()
    Counter("hunt36_calls", "Calls.", ["method"], registry=own).labels("x").inc(1)
    admin = AdminServer(AdminOptions(registry=own, require_server=False))
    await admin.start()
    try:
        for _ in range(5):
            reloaded = CollectorRegistry()
            Counter("hunt36_calls", "Calls.", ["method"], registry=reloaded).labels("x").inc(2)
            admin.add_registry(reloaded)
            admin.remove_registry(reloaded)
            gone = weakref.ref(reloaded)
            del reloaded
            _freed(gone)
            await _scrape(admin)
        assert _calls(await _scrape(admin), "x") == 11
        assert len(admin._left) == 1
    finally:
        await admin.stop()


async def test_registries_that_left_are_folded_without_scrapes_too() -> None:
    """Nothing scrapes the admin server (no Prometheus yet): what the registries freed
    left is folded at each removal, not kept one entry per reload until a scrape."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    for _ in range(5):
        reloaded = CollectorRegistry()
        Counter("hunt36_calls", "Calls.", ["method"], registry=reloaded).labels("x").inc(2)
        admin.add_registry(reloaded)
        admin.remove_registry(reloaded)
        gone = weakref.ref(reloaded)
        del reloaded
        _freed(gone)
    assert len(admin._left) <= 2  # the last one (freed after it left) and the fold
