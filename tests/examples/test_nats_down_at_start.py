"""NATS down when the order service starts: the outbox relay must not hold the service.

The point of a transactional outbox is that PlaceOrder needs only the order store; the
relay publishes whenever NATS is reachable. ``events.outbox_relay`` awaited
``nats.connect(..., max_reconnect_attempts=-1)``, which returns only once connected, so an
orderd (or summaryd) started while NATS was down never served (its Kubernetes startup
probe then killed it) and nats-py's default error callback logged a traceback at every
attempt, five a second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import traceback
import uuid
from pathlib import Path

import nats.errors
import pytest
import structlog

from examples.ecom import events
from examples.ecom.storage import ItemRecord, NewOrder, SqliteStore, open_store
from meshkit.messaging import RelayOptions, messaging_metrics
from meshkit.resilience import Backoff
from tests.messaging.conftest import NATS_SERVER, NatsServer
from tests.support.loops import run as run_on_loop
from tests.support.skips import require_uvloop, skip_or_fail
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_relay_lets_the_service_start_while_nats_is_down(tmp_path: Path) -> None:
    """With NATS not yet started the relay's context is entered at once, an order placed
    then waits in the outbox, the outage is one warning (nats-py's traceback per attempt
    is not logged), and once NATS starts the order is published."""
    if not Path(NATS_SERVER).exists():  # noqa: ASYNC240 - a stat
        skip_or_fail(f"nats-server not found at {NATS_SERVER}")
    server = NatsServer(tmp_path / "nats")  # a free port, nothing listening yet
    store = await open_store(f"sqlite:///{tmp_path / 'orders.db'}")
    assert isinstance(store, SqliteStore)
    nats_log = _Records()
    logging.getLogger("nats").addHandler(nats_log)
    options = RelayOptions(name="orders", poll_interval_s=0.05,
                           error_backoff=Backoff(base_delay_s=0.05, max_delay_s=0.1))
    try:
        with structlog.testing.capture_logs() as logs:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(5):  # before: blocked for ever
                    relay = await stack.enter_async_context(
                        events.outbox_relay(store, server.url, None, options))
                assert relay is not None
                await store.place_order(NewOrder(
                    user_id="u-1", items=(ItemRecord("sku-1", 1, 100),), currency="EUR",
                    total_minor=100, idempotency_key="k-1", fingerprint="f-1"))
                relay.notify()
                await until(lambda: sum(e["event"] == "nats unavailable, retrying"
                                        for e in logs) >= 1, timeout_s=5,
                            what="the outage logged")
                await asyncio.sleep(0.5)  # a few more attempts (one every 0.2 s)
                assert not await _none_pending(store)  # waits in the outbox
                await server.start()
                await until(lambda: _none_pending(store), timeout_s=20,
                            what="the order published once NATS is up")
        seen = [e["event"] for e in logs]
        assert seen.count("nats unavailable, retrying") == 1, seen  # not one per attempt
        assert "nats available again" in seen, seen
        assert not [r for r in nats_log.records if r.levelno >= logging.ERROR], \
            [r.getMessage() for r in nats_log.records]
    finally:
        logging.getLogger("nats").removeHandler(nats_log)
        server.kill()
        await store.close()


async def _none_pending(store: SqliteStore) -> bool:
    return await store.count_pending() == 0


async def test_a_malformed_url_fails_at_start_and_an_unreached_server_ends_cleanly(
        tmp_path: Path) -> None:
    """Connecting in the background must not hide a URL nats-py refuses (before the
    background connect it failed the start; with it, before this check, the relay never
    started and nothing said why, and closing the client raised AssertionError); and a
    relay whose NATS never answered ends without an error."""
    store = await open_store(f"sqlite:///{tmp_path / 'orders.db'}")
    served = False
    try:
        with pytest.raises(nats.errors.Error, match="invalid connect url"):
            async with asyncio.timeout(5):
                async with events.outbox_relay(store, "nats://127.0.0.1:99999", None):
                    served = True
        assert not served  # refused at the start, not as the service stops
        server = NatsServer(tmp_path / "nats")  # a free port, never started
        async with asyncio.timeout(5):
            async with events.outbox_relay(store, server.url, None) as relay:
                assert relay is not None
    finally:
        await store.close()


async def test_refused_credentials_are_logged_once_not_at_every_attempt(
        tmp_path: Path) -> None:
    """A NATS that refuses the relay's credentials: the connect retries (the server may
    be reconfigured), the refusal logged once, not once per attempt (five a second:
    '_NatsOutages' of 651fe06 logged errors other than an outage each time)."""
    if not Path(NATS_SERVER).exists():  # noqa: ASYNC240 - a stat
        skip_or_fail(f"nats-server not found at {NATS_SERVER}")
    server = NatsServer(tmp_path / "nats")
    _spawn_with_user(server)
    store = await open_store(f"sqlite:///{tmp_path / 'orders.db'}")
    try:
        await until(lambda: _accepting(server.port), timeout_s=10, what="nats-server up")
        url = f"nats://relay:wrong@127.0.0.1:{server.port}"
        with structlog.testing.capture_logs() as logs:
            async with events.outbox_relay(store, url, None):
                await until(lambda: any(e["event"].startswith("nats ") for e in logs),
                            timeout_s=5, what="the refusal logged")
                await asyncio.sleep(1.0)  # about five more attempts
        said = [(e["event"], e.get("error")) for e in logs if e["event"].startswith("nats ")]
        assert ("nats error", "Error: nats: 'Authorization Violation'") in said, said
        assert len(said) == len(set(said)) <= 2, said  # the refusal, the reset it causes
        assert "wrong" not in str(said)  # the password is never logged
    finally:
        server.kill()
        await store.close()


def _spawn_with_user(server: NatsServer) -> None:
    """Start a nats-server (no JetStream) on ``server.port`` that takes user relay/right."""
    server.proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(server.port), "--user", "relay",
         "--pass", "right"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_client_reconnecting_with_data_pending_closes_cleanly(
        tmp_path: Path, loop_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NATS dies under a running relay or projection, which then publishes (an event, an
    ack, a fetch: nats-py buffers it for the reconnect), and the process stops: closing
    the client flushed that buffer to the dead connection and raised, asyncio's
    ConnectionResetError and uvloop's RuntimeError ('the handler is closed': the ecom
    processes run on uvloop, meshkit.run), so the service's shutdown ended in a traceback
    and skipped what came after (the projection's store close)."""
    if not Path(NATS_SERVER).exists():
        skip_or_fail(f"nats-server not found at {NATS_SERVER}")
    if loop_kind == "uvloop":
        require_uvloop()
    monkeypatch.setenv("MESHKIT_TEST_LOOP", loop_kind)  # the loops tests.support.loops makes
    server = NatsServer(tmp_path / "nats")

    async def main() -> None:
        await server.start()
        nc, connecting = await events.nats_connection(server.url, "test")
        async with asyncio.timeout(10):
            await connecting
        server.kill()
        await until(lambda: not nc.is_connected, timeout_s=10, what="the loss seen")
        await nc.publish("ecom.test", b"buffered for the reconnect")
        async with asyncio.timeout(10):
            await events.close_nats(nc)  # before: raised
        assert nc.is_closed

    try:
        run_on_loop(main())
    finally:
        server.kill()


@pytest.mark.parametrize("url", ["nats://relay:s3cr/et@127.0.0.1:4222",
                                 "nats://relay:s3cr#et@127.0.0.1:4222"])
async def test_a_refused_url_is_not_quoted_with_its_password(url: str) -> None:
    """A password holding '/', '?' or '#' pasted unencoded into MESHKIT_NATS_URL: nats-py
    refuses the URL ('invalid connect url option', raised while handling urllib's
    ValueError "Port could not be cast to integer value as 's3cr'"), and orderd or
    summaryd exited with both in its traceback: the password's start in the log of every
    restart. The refusal now quotes the URL without credentials and drops that context."""
    with pytest.raises(nats.errors.Error, match="invalid connect url") as refused:
        await events.nats_connection(url, "test")
    shown = "".join(traceback.format_exception(refused.value))
    assert "s3cr" not in shown, shown
    assert "***@127.0.0.1:4222" in str(refused.value), str(refused.value)


async def test_the_pending_gauge_counts_the_outbox_while_nats_never_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """meshkit_messaging_outbox_pending is set by the relay's rounds, and since 651fe06
    no round runs before NATS answers: the gauge, exported at 0 when the relay was
    made, read 0 for as long as NATS stayed down while the orders piled up in the
    outbox, so an alert or dashboard on it said nothing was waiting. It is counted from
    the store while the relay waits for NATS."""
    monkeypatch.setattr(events, "PENDING_COUNT_S", 0.05)
    name = f"orders-{uuid.uuid4().hex[:8]}"
    store = await open_store(f"sqlite:///{tmp_path / 'orders.db'}")
    server = NatsServer(tmp_path / "nats")  # a free port, never started
    gauge = messaging_metrics().outbox_pending.labels(name)
    try:
        async with events.outbox_relay(store, server.url, None, RelayOptions(name=name)):
            await store.place_order(NewOrder(
                user_id="u-1", items=(ItemRecord("sku-1", 1, 100),), currency="EUR",
                total_minor=100, idempotency_key="k-1", fingerprint="f-1"))
            await until(lambda: gauge._value.get() == 1, timeout_s=5,  # before: 0
                        what="the pending event counted")
    finally:
        await store.close()
