"""A channel asked for multicallables of ever new method names (a gateway forwarding the
names its own callers send, a generic client building one per call) holds a bounded
amount of memory for them: its per-method caches start over or evict past their bounds.
The set of names already used as a plan key grew by every distinct name, for good."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method

# names this long make each one retained for good ~300 bytes (plus the set's slot), so a
# batch that leaks its names retains about 1 MB: far over the margin below
_PAD = "x" * 240


def _names(start: int, n: int) -> list[str]:
    return [f"/meshkit.test.Gateway{_PAD}/M{i}" for i in range(start, start + n)]


async def test_distinct_method_names_do_not_grow_the_channel(registry: LocalRegistry) -> None:
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
    try:
        tracemalloc.start()  # from the first name: every name a cache holds is traced
        try:
            # past every per-method bound (plan keys 1024, the method matchers' caches
            # 4096, which then hold as many names, the newest)
            for name in _names(0, 6000):
                ch.unary_unary(name)
            gc.collect()
            before, _ = tracemalloc.get_traced_memory()
            for name in _names(6000, 4000):
                ch.unary_unary(name)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # a leak of every name: ~1.3 MB per batch; a bounded channel: a few KB either way
        assert after - before < 300_000, f"grew {after - before} bytes over 4000 new names"
    finally:
        await asyncio.wait_for(ch.close(), 10)


async def test_a_stub_made_before_the_keys_start_over_keeps_its_codecs(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """Past the bound the keys start over; a stub of a method made before (its plan
    keyed by the method's name) and one of the same method with other codecs made after
    each read their own codecs' responses, not the other's sub-channel multicallable."""
    await echo_servers("e1")
    ch = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(insecure=True))
    try:
        first = ch.unary_stream(method("ServerStream"),
                                response_deserializer=lambda b: ("first", b))
        assert [r async for r in first(b"1", timeout=10)] == [("first", b"e1|0")]
        for name in _names(0, 1100):  # past the plan keys' bound: they start over
            ch.unary_unary(name)
        second = ch.unary_stream(method("ServerStream"),
                                 response_deserializer=lambda b: ("second", b))
        assert [r async for r in second(b"1", timeout=10)] == [("second", b"e1|0")]
        assert [r async for r in first(b"1", timeout=10)] == [("first", b"e1|0")]
    finally:
        await asyncio.wait_for(ch.close(), 10)
