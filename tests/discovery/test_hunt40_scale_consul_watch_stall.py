"""A Consul watch's update of 2,000 instances no longer holds the event loop for its whole
parse.

A ``/v1/health/service/<name>`` answer of 2,000 instances (about 2.8 MB, the shape a
Consul 1.17 agent sends: node, service, serfHealth and TTL check per entry) was parsed in
one go on the event loop: ``json.loads`` of the whole body in py-consul's callback, then
2,000 ``Instance`` built, then the new set compared with the last. Measured about 80 ms
on a quiet box (200-300 ms on this loaded one): every call, every heartbeat of the
process waited that long at each update of the watched service (a rolling deploy: one per
wakeup). Now the entries are decoded one by one, built and compared in slices of a few
milliseconds with the loop let run in between.

The agent here is a plain HTTP server in a thread of its own (its bodies serialised
before the test, so that its work is not the loop's); a probe task on the loop measures
the longest gap between its wakeups (the loop's longest stall) during each update, and
the test compares it with the time the same answer takes to parse in one go, measured in
the same run (the old code's single callback), both in the loop thread's CPU time.
"""

from __future__ import annotations

import asyncio
import gc
import http.server
import json
import statistics
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.discovery._shared import decoded_in_slices
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

N = 2000
SERVICE = "orderd"


def _entries(n: int, port0: int) -> list[dict[str, Any]]:
    """``n`` health entries as a Consul agent answers them, ports from ``port0``."""
    out = []
    node_name, address = "node-1", "10.0.0.1"
    for i in range(n):
        sid = f"{SERVICE}-host{i:05d}-1"
        node = {
            "ID": "00000000-0000-0000-0000-0000000000d0",
            "Node": node_name,
            "Address": address,
            "Datacenter": "dc1",
            "TaggedAddresses": {
                "lan": address,
                "wan": address,
                "lan_ipv4": address,
                "wan_ipv4": address,
            },
            "Meta": {"consul-network-segment": "", "consul-version": "1.17.0"},
            "CreateIndex": 13,
            "ModifyIndex": 15,
        }
        svc = {
            "Kind": "",
            "ID": sid,
            "Service": SERVICE,
            "Tags": ["grpc", "v1"],
            "Address": f"10.1.{i // 250}.{i % 250}",
            "Meta": {"zone": "eu-west-1a", "version": f"1.2.{port0}"},
            "Port": port0 + i,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "PeerName": "",
            "CreateIndex": 100 + i,
            "ModifyIndex": 100 + i,
            "TaggedAddresses": {},
        }
        serf = {
            "Node": node_name,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 13,
            "ModifyIndex": 13,
        }
        ttl = {
            "Node": node_name,
            "CheckID": f"service:{sid}:ttl:abcdef01",
            "Name": "meshkit ttl",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": sid,
            "ServiceName": SERVICE,
            "ServiceTags": ["grpc", "v1"],
            "Type": "ttl",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 100 + i,
            "ModifyIndex": 100 + i,
        }
        out.append({"Node": node, "Service": svc, "Checks": [serf, ttl]})
    return out


class _Agent(http.server.ThreadingHTTPServer):
    """Answers ``GET /v1/health/service/orderd``: ``bodies[index]`` for the index the
    query blocks on (0 when it does not) with ``X-Consul-Index`` ``index + 1``; a query
    on the last index is held (up to its ``wait``, at most 5 s) and answered with no
    change. ``released`` gates the answer to each blocking query (the test's probe is
    running by then)."""

    daemon_threads = True

    def __init__(self, bodies: list[bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies = bodies
        self.released = threading.Semaphore(0)
        self.closing = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Agent

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        index = int(query.get("index", ["0"])[0])
        bodies = self.server.bodies
        if index >= len(bodies):  # nothing new: held, then the same answer
            self.server.closing.wait(5.0)
            index = len(bodies) - 1
        elif index >= 1 and not self.server.released.acquire(timeout=30.0):
            self.send_error(500)
            return
        body = bodies[index]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Consul-Index", str(index + 1))
        self.send_header("X-Consul-KnownLeader", "true")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def agent() -> Iterator[_Agent]:
    # the first answer, then two updates: every instance at a new port (a rolling deploy)
    bodies = [json.dumps(_entries(N, port0)).encode() for port0 in (20000, 30000, 40000)]
    server = _Agent(bodies)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _decode_in_one_go(body: bytes) -> float:
    """CPU seconds ``json.loads`` takes for ``body``: what the old watch's response
    callback did in one go (the instances were then built in one more)."""
    start = time.thread_time()
    entries = json.loads(body.decode("utf-8"))
    assert len(entries) == N
    return time.thread_time() - start


async def _longest_stall_while(aw: Any) -> tuple[Any, float]:
    """Await ``aw`` while a probe on the loop wakes every millisecond: the most CPU time
    the loop's thread spent between two of its wakeups (seconds). CPU time, not wall
    time: on a loaded box the thread is also descheduled for tens of milliseconds
    between any two wakeups, which no code of the loop's can help."""
    done = False
    worst = 0.0

    async def probe() -> None:
        nonlocal worst
        last = time.thread_time()
        while not done:
            await asyncio.sleep(0.001)
            now = time.thread_time()
            worst = max(worst, now - last)
            last = now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)  # the probe running
    try:
        result = await aw
    finally:
        done = True
        await task
    return result, worst


async def test_a_2000_instance_update_does_not_hold_the_loop(agent: _Agent) -> None:
    host, port = agent.server_address[:2]
    registry = ConsulRegistry(
        ConsulOptions(addr=f"{host}:{port}", wait_s=5.0, watch_query_interval_s=0.01)
    )
    try:
        one_go = statistics.median(_decode_in_one_go(agent.bodies[1]) for _ in range(3))
        watch = registry.watch(SERVICE).__aiter__()
        async with asyncio.timeout(30):
            first = await anext(watch)
        assert len(first) == N
        stalls = []
        # the collector's full collections (of the whole test process's heap, which
        # these allocations trigger: 100-300 ms each here) are not the watch's own work
        gc.disable()
        try:
            for port0 in (30000, 40000):
                agent.released.release()
                async with asyncio.timeout(30):
                    update, stall = await _longest_stall_while(anext(watch))
                assert len(update) == N and min(i.port for i in update) == port0
                stalls.append(stall)
        finally:
            gc.enable()
        # a callback holding the loop shows in both updates; the box's own hiccups
        # (other processes on 2 cores) seldom twice
        stall = min(stalls)
        assert stall < one_go / 2, (stalls, one_go)  # about 4 ms here, against 40-90
        await watch.aclose()
    finally:
        await registry.close()


TEXTS = [
    '{"a": [1, {"b": 2}], "c": {"d": [3]}, "e": "x"}',
    ' { "k" : [ ] }\n',
    '{"a": [1], "a": 2}',
    '{"a" 1}',
    '{"a": 1,}',
    "{1: 2}",
    '{"a": [1}',
    "[]",
    " [ ]\n",
    "null",
    "{}",
    '[{"a": 1}]',
    ' [ {"a": [1, 2]} ,\t{"b": "]"} ] ',
    '[1, "x", null, 2.5e3, true]',
    "[1,]",
    "[1 2]",
    "[1] x",
    "[",
    "",
    '["\\ud800"]',
]


@pytest.mark.parametrize("text", TEXTS, ids=[f"text{n}" for n in range(len(TEXTS))])
async def test_decoded_in_slices_is_json_loads(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            await decoded_in_slices(text)
    else:
        assert await decoded_in_slices(text) == expected


async def test_an_undecodable_answer_is_retried(agent: _Agent) -> None:
    # a body that is no JSON fails that read (retried after a backoff), as before: it
    # does not end the watch
    good = agent.bodies[0]
    agent.bodies[0] = b'[{"Node": {}, "Service": {}'
    host, port = agent.server_address[:2]
    registry = ConsulRegistry(
        ConsulOptions(addr=f"{host}:{port}", backoff_base_s=0.05, backoff_max_s=0.1)
    )
    try:
        watch = registry.watch(SERVICE).__aiter__()
        first = asyncio.ensure_future(anext(watch))
        await until(lambda: registry.status().last_error is not None, timeout_s=10.0)
        assert "Expecting" in str(registry.status().last_error)
        agent.bodies[0] = good
        async with asyncio.timeout(10):
            assert len(await first) == N
        await watch.aclose()
    finally:
        await registry.close()
