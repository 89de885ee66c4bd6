"""The projection service process: ``python -m examples.ecom.projection_service``.

The CQRS read side of the ecom example: consumes ``OrderPlaced`` events from the
``ECOM_ORDERS`` JetStream stream with the durable pull consumer ``order-summary`` (see
:mod:`examples.ecom.events`), checks each event's publisher is the order service's
workload (signature against the mesh CA), applies it once per event id to per-user
summaries, and serves them as ``ecom.v1.OrderSummaryService``, registered as
``summaryd`` over mTLS. Any mesh workload may read summaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import nats

import meshkit
from examples.ecom import events, security
from examples.ecom._process import announce, parser, serve_options, setup_logging, tls
from examples.ecom.proto import summary_pb2_grpc
from examples.ecom.storage import open_store
from meshkit.auth import AuthOptions, AuthzPolicy, Rule, workload_id
from meshkit.messaging import Consumer, MessageVerifier

SERVICE = "summaryd"


def summaryd_policy(*, insecure: bool) -> AuthzPolicy:
    """Any mesh workload may read summaries (anyone when ``insecure``)."""
    return AuthzPolicy(rules={"*": Rule(allow_peers=("*",), allow_anonymous=insecure)})


async def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, open the store, consume events and serve until a signal."""
    setup_logging()
    p = parser("projection_service", "sqlite:///summary.db")
    p.add_argument("--nats-url", default=os.environ.get("MESHKIT_NATS_URL",
                                                        "nats://127.0.0.1:4222"),
                   help="NATS with JetStream (env MESHKIT_NATS_URL)")
    p.add_argument("--durable", default=os.environ.get("ECOM_SUMMARY_DURABLE", events.DURABLE),
                   help="durable consumer name; processes with one name share the events"
                        " (env ECOM_SUMMARY_DURABLE)")
    p.add_argument("--ack-wait-s", type=float,
                   default=float(os.environ.get("ECOM_SUMMARY_ACK_WAIT_S", "5")),
                   help="seconds before an event a dead consumer held is redelivered"
                        " (env ECOM_SUMMARY_ACK_WAIT_S; default 5)")
    args = p.parse_args(argv)
    tls_options = tls(args, SERVICE)
    verifier = None
    if args.cert_dir:
        verifier = MessageVerifier.from_file(
            Path(args.cert_dir) / "ca.pem",
            allowed_publishers=(workload_id(security.TRUST_DOMAIN, "orderd"),))
    store = await open_store(args.db)
    nc = await nats.connect(args.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await events.ensure_order_stream(js)
        consumer = Consumer(js, events.Projection(store), events.consumer_options(
            verifier, durable=args.durable, ack_wait_s=args.ack_wait_s))
        task = asyncio.create_task(consumer.run(), name="projection-consumer")
        try:
            auth = AuthOptions(policy=summaryd_policy(insecure=tls_options is None))
            await meshkit.serve(
                SERVICE,
                [(summary_pb2_grpc.add_OrderSummaryServiceServicer_to_server,
                  events.OrderSummaryServicer(store))],
                options=serve_options(args, tls_options, auth),
                on_started=announce,
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await nc.close()
        await store.close()


if __name__ == "__main__":
    meshkit.run(main())  # on uvloop when installed (meshkit[fast])
