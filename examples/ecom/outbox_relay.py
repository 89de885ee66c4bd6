"""The outbox relay as a process of its own: ``python -m examples.ecom.outbox_relay``.

Publishes the order store's pending ``OrderPlaced`` events to the ``ECOM_ORDERS`` stream
and marks them sent, like the relay inside the order service (``--nats-url``), for a
deployment that runs it beside the order services instead (several relays may share one
outbox: a repeat is dropped by the stream's dedupe window or the projection). Signs with
the ``orderd`` workload identity when ``--cert-dir`` is given. Prints ``READY relay``
once its store is open (NATS is connected in the background: it may be down); runs
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from examples.ecom._process import (
    count_arg,
    open_store_waiting,
    run_service,
    seconds_arg,
    setup_logging,
)
from examples.ecom.events import event_signer, outbox_relay
from examples.ecom.storage import Store
from meshkit.messaging import RelayOptions


async def _open_store(url: str, wait_s: float) -> Store | SystemExit:
    """:func:`~examples.ecom._process.open_store_waiting`, its :class:`SystemExit` (a
    store that cannot be opened: the one line to end with) returned, not raised: raised
    in a task it leaves the event loop at once, and asyncio then logs the task's
    exception as never retrieved after that line."""
    try:
        return await open_store_waiting(url, wait_s)
    except SystemExit as exc:
        return exc


async def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, open the store and relay until a signal."""
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m examples.ecom.outbox_relay")
    p.add_argument("--db", default=os.environ.get("DATABASE_URL", "sqlite:///orders.db"),
                   help="the order store: sqlite:///file.db or postgresql://..."
                        " (env DATABASE_URL)")
    p.add_argument("--nats-url", default=os.environ.get("MESHKIT_NATS_URL",
                                                        "nats://127.0.0.1:4222"),
                   help="NATS with JetStream (env MESHKIT_NATS_URL)")
    p.add_argument("--cert-dir", default=os.environ.get("MESHKIT_CERT_DIR"),
                   help="meshkit certs directory: sign as orderd (env MESHKIT_CERT_DIR)")
    p.add_argument("--batch-size", type=count_arg(), default=100, help="events per round")
    p.add_argument("--db-wait-s", type=seconds_arg("ECOM_DB_WAIT_S"),
                   default=os.environ.get("ECOM_DB_WAIT_S") or "60",
                   help="how long to wait at the start for a database that cannot be"
                        " reached (env ECOM_DB_WAIT_S; default 60)")
    args = p.parse_args(argv)
    signer = event_signer(args.cert_dir, "orderd") if args.cert_dir else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # a handler of a signal the inherited mask blocks never runs (the mask survives fork
    # and exec): unblock them, as Go's signal.Notify and meshkit's serve() do
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    # a SIGTERM while the database is awaited ends the wait (the handlers are ours now)
    opening = asyncio.ensure_future(_open_store(args.db, args.db_wait_s))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((opening, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not opening.done():
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
        return
    store = opening.result()
    if isinstance(store, SystemExit):  # raised here: out of a task it also logged the task
        raise store
    try:
        async with outbox_relay(store, args.nats_url, signer,
                                RelayOptions(name="orders", batch_size=args.batch_size)):
            print("READY relay", flush=True)
            await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await store.close()


if __name__ == "__main__":
    run_service("examples.ecom.outbox_relay", main())  # one line for a bad setting
