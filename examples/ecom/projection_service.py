"""The projection service process: ``python -m examples.ecom.projection_service``.

The CQRS read side of the ecom example: consumes ``OrderPlaced`` events from the
``ECOM_ORDERS`` JetStream stream with the durable pull consumer ``order-summary`` (see
:mod:`examples.ecom.events`), checks each event's publisher is the order service's
workload (signature against the mesh CA), applies it once per event id to per-user
summaries, and serves them as ``ecom.v1.OrderSummaryService``, registered as
``summaryd`` over mTLS. Any mesh workload may read summaries. Beside the consumer,
:func:`purge_processed_events` forgets the applied event ids older than
:data:`PROCESSED_RETENTION_S`, once the stream can no longer deliver their events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog

import meshkit
from examples.ecom import events, security
from examples.ecom._process import (
    announce,
    open_store_waiting,
    parser,
    run_service,
    seconds_arg,
    serve_options,
    setup_logging,
    tls,
)
from examples.ecom.proto import summary_pb2_grpc
from examples.ecom.storage import Store
from meshkit.auth import AuthOptions, AuthzPolicy, Rule, workload_id
from meshkit.messaging import Consumer

SERVICE = "summaryd"

#: How long an applied event id is kept in ``processed_events`` (seconds): the stream's
#: :data:`~examples.ecom.events.STREAM_MAX_AGE_S` (a day) plus its
#: :data:`~examples.ecom.events.STREAM_DUPLICATE_WINDOW_S` (2 minutes) as a margin.
#:
#: The id is there so that a second delivery of its event counts nothing; it may be
#: forgotten once the event cannot be delivered again. JetStream delivers only what the
#: stream holds, and deletes an event ``max_age`` after storing it, consumed or not, so
#: every delivery of an event comes less than ``max_age`` after its publish. An id is
#: written when the projection applies the event, which is after its publish (a lagging
#: projection writes it later, never earlier): an id processed more than ``max_age`` ago
#: belongs to an event published more than ``max_age`` ago, which the stream no longer
#: has. The margin covers what that leaves out: JetStream expiring an event a little
#: after ``max_age``, the NATS server's clock (which stamps and expires events) running
#: ahead of the projection hosts' (which stamp and cut off ids), and a delivery fetched
#: just before its event expired still being handled (seconds: the store's timeouts).
#:
#: Not covered: a second copy of an event in the stream. The relay publishes an event
#: again when it could not mark it sent (the stream drops the repeat only within its
#: dedupe window); that copy can be delivered until ``max_age`` after its own publish.
#: If the projection applied the first copy more than this retention before the second
#: copy is delivered (e.g. the projection down in between), the event counts twice.
PROCESSED_RETENTION_S = events.STREAM_MAX_AGE_S + events.STREAM_DUPLICATE_WINDOW_S

_log = structlog.get_logger("examples.ecom.projection_service")


def summaryd_policy(*, insecure: bool) -> AuthzPolicy:
    """Any mesh workload may read summaries (anyone when ``insecure``)."""
    return AuthzPolicy(rules={"*": Rule(allow_peers=("*",), allow_anonymous=insecure)})


async def purge_processed_events(store: Store, *,
                                 retention_s: float = PROCESSED_RETENTION_S,
                                 interval_s: float = events.PURGE_INTERVAL_S,
                                 batch: int = 1000) -> None:
    """Forget the applied event ids processed more than ``retention_s`` seconds ago
    (default :data:`PROCESSED_RETENTION_S`, a day and 2 minutes), now and then every
    ``interval_s`` seconds (default :data:`examples.ecom.events.PURGE_INTERVAL_S`, a
    minute), until cancelled.

    Each purge deletes ``batch`` rows at a time (default 1000; one short transaction
    each, so an apply waits for one batch at most) until a batch comes back short. A
    failure is logged as a warning (``processed events purge failed``) and the next
    interval tried again; it never ends the projection. Several projection processes
    purging one store is harmless. Raises ``ValueError`` for a ``retention_s`` not a
    finite number > 0 and at most :data:`events.MAX_RETENTION_S`, an ``interval_s`` not
    > 0 or a ``batch`` below 1.
    """
    # a bug too is logged and tried again: the consumer goes on
    await events.purge_every(store.purge_processed, retention_s=retention_s,
                             interval_s=interval_s, batch=batch,
                             warning="processed events purge failed", errors=(Exception,))


async def _serve_while_consuming(serving: asyncio.Task[None],
                                  consuming: asyncio.Task[None],
                                  started: list[meshkit.MeshServer]) -> None:
    """Await ``serving`` (``meshkit.serve``: until SIGTERM/SIGINT, then its drain) while
    ``consuming`` runs. The consumer's ``run()`` ends only with an error no retry cures
    (``ConfigError``: the durable is a push consumer, or not explicit-ack, made under its
    name by another tool; ``ConnectionClosedError``; a NATS configuration nats-py does
    not retry), so then the error is logged (``projection consumer ended``), the server
    drained, and the process exits with status 1: serving on, it answered ever staler
    summaries, ready and healthy, while no event was applied and nothing said why.

    ``started`` holds the server once ``serve`` started it (its ``on_started``): its
    drain is awaited to its end, the one a signal began or one begun now (a cancel of
    ``serve`` would end ``serve`` at once while a signal's drain, shielded, ran on: the
    store and NATS were closed under it and ``asyncio.run``'s final cancel cut its
    ``drain_delay_s`` and ``grace_s``); before that, ``serve`` is cancelled (its start
    undone)."""
    try:
        await asyncio.wait((serving, consuming), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled: the server drains as for a signal
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        raise
    if serving.done():
        await serving  # its error, if any, as before
        return
    exc = None if consuming.cancelled() else consuming.exception()
    _log.error("projection consumer ended; stopping",
               error=f"{type(exc).__name__}: {exc}" if exc is not None else "returned")
    if started:  # serving: drain (deregister, then stop), or wait for the drain begun
        await started[0].drain()
        await serving  # returns: the drain has ended
    else:
        serving.cancel()  # starting: the start undoes itself (see meshkit.serve)
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    raise SystemExit(1)


async def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, open the store, consume events (purging old event ids beside
    them) and serve until a signal."""
    setup_logging()
    p = parser("projection_service", "sqlite:///summary.db")
    p.add_argument("--nats-url", default=os.environ.get("MESHKIT_NATS_URL",
                                                        "nats://127.0.0.1:4222"),
                   help="NATS with JetStream (env MESHKIT_NATS_URL)")
    p.add_argument("--durable", default=os.environ.get("ECOM_SUMMARY_DURABLE", events.DURABLE),
                   help="durable consumer name; processes with one name share the events"
                        " (env ECOM_SUMMARY_DURABLE)")
    p.add_argument("--ack-wait-s", type=seconds_arg("ECOM_SUMMARY_ACK_WAIT_S", zero=False),
                   default=os.environ.get("ECOM_SUMMARY_ACK_WAIT_S") or "5",
                   help="seconds before an event a dead consumer held is redelivered"
                        " (env ECOM_SUMMARY_ACK_WAIT_S; default 5)")
    args = p.parse_args(argv)
    tls_options = tls(args, SERVICE)
    verifier = None
    if args.cert_dir:
        verifier = events.event_verifier(  # a rotated CA bundle is taken
            args.cert_dir,
            allowed_publishers=(workload_id(security.TRUST_DOMAIN, "orderd"),))
    # the serve settings (--host, the admin address) checked before the database wait:
    # a typo ends the start at once, not after --db-wait-s (built again below, with auth)
    serve_options(args, tls_options)
    store = await open_store_waiting(args.db, args.db_wait_s)
    # summaries are served from the store whether or not NATS answers: the consumer
    # starts once it is reachable and the stream made (events.nats_connection)
    nc, connecting = await events.nats_connection(args.nats_url, "projection")
    try:
        js = nc.jetstream()
        consumer = Consumer(js, events.Projection(store), events.consumer_options(
            verifier, durable=args.durable, ack_wait_s=args.ack_wait_s))

        async def consume() -> None:
            await events.ensure_order_stream_when_connected(connecting, js)
            await consumer.run()

        consuming = asyncio.create_task(consume(), name="projection-consumer")
        tasks = [connecting, consuming,
                 asyncio.create_task(purge_processed_events(store),
                                     name="processed-events-purge")]
        started: list[meshkit.MeshServer] = []

        def on_started(server: meshkit.MeshServer) -> None:
            started.append(server)
            announce(server)

        try:
            auth = AuthOptions(policy=summaryd_policy(insecure=tls_options is None))
            serving = asyncio.create_task(meshkit.serve(
                SERVICE,
                [(summary_pb2_grpc.add_OrderSummaryServiceServicer_to_server,
                  events.OrderSummaryServicer(store))],
                options=serve_options(args, tls_options, auth),
                on_started=on_started,
            ), name="serve")
            await _serve_while_consuming(serving, consuming, started)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                if task is consuming and task.done() and not task.cancelled() \
                        and task.exception() is not None:
                    continue  # logged by _serve_while_consuming, the exit status 1
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await events.close_nats(nc)
        await store.close()


if __name__ == "__main__":
    run_service("examples.ecom.projection_service", main())  # one line for a bad setting
