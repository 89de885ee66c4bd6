"""The order service process: ``python -m examples.ecom.order_service --instance-id orderd-1``.

Registers as ``orderd`` and serves ``ecom.v1.OrderService`` over mTLS; every call needs an
end-user JWT (verified against the user service's JWKS, found through the registry) whose
subject is the user the request is about. PlaceOrder checks the user through
``meshkit.dial("userd")``, forwarding the caller's token with the order service's own
workload identity.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

import grpc
import structlog

import meshkit
from examples.ecom import mesh, security
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
from examples.ecom.events import event_signer, outbox_relay
from examples.ecom.orders import OrderServicer
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2_grpc
from meshkit.auth import (
    AuthOptions,
    JWKSClient,
    JWKSClientOptions,
    JWKSError,
    JWTVerifier,
    TokenForwarder,
    VerifierOptions,
    current_claims,
)
from meshkit.resilience import RateLimitOptions, by_identity

_log = structlog.get_logger("examples.ecom.order_service")

SERVICE = "orderd"
USER_SERVICE = "userd"
_NOT_YOURS = "the token's subject may not act for this user"


class OwnedOrders(OrderServicer):
    """OrderService where a caller may only touch their own orders (token ``sub``)."""

    @staticmethod
    async def _require_subject(user_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        claims = current_claims()
        if claims is None or claims.subject != user_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _NOT_YOURS)

    async def PlaceOrder(self, request: order_pb2.PlaceOrderRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> order_pb2.Order:
        """PlaceOrder for the token's own user only (else PERMISSION_DENIED)."""
        await self._require_subject(request.user_id, context)
        return await super().PlaceOrder(request, context)

    async def ListOrders(self, request: order_pb2.ListOrdersRequest,
                         context: grpc.aio.ServicerContext[Any, Any]
                         ) -> order_pb2.ListOrdersResponse:
        """ListOrders for the token's own user only (else PERMISSION_DENIED)."""
        await self._require_subject(request.user_id, context)
        return await super().ListOrders(request, context)

    async def GetOrder(self, request: order_pb2.GetOrderRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> order_pb2.Order:
        """GetOrder; another user's order is NOT_FOUND (its existence is not revealed)."""
        order = await super().GetOrder(request, context)
        claims = current_claims()
        if claims is None or claims.subject != order.user_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"order {request.order_id} not found")
        return order


def jwks_url_from(users: meshkit.MeshChannel) -> Any:
    """A JWKS URL provider reading the ``jwks_port`` meta of the user service's endpoints.

    Each call (one per fetch) takes the endpoints announcing a JWKS whose connection is
    in the best state (READY, else IDLE, else FAILING) in turn: every user-service
    instance serves the same keys, and a fetch that failed on a dead instance still
    listed (killed before its registration lapsed, or hung) is retried on another, where
    always taking the first by instance id sent every fetch to it."""
    turn = itertools.count()

    def url() -> str:
        found = [ep for ep in users.endpoints() if ep.instance.meta.get("jwks_port")]
        if not found:
            raise JWKSError("no user service instance announces a JWKS")
        best = min(ep.state for ep in found)
        candidates = [ep for ep in found if ep.state == best]
        ep = candidates[next(turn) % len(candidates)]
        host = ep.instance.address.rsplit(":", 1)[0]
        return f"http://{host}:{ep.instance.meta['jwks_port']}/.well-known/jwks.json"

    return url


async def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, open the store, dial the user service and serve until a signal."""
    setup_logging()
    p = parser("order_service", "sqlite:///orders.db")
    p.add_argument("--rate-limit-storage",
                   default=os.environ.get("MESHKIT_RATELIMIT_STORAGE", "memory://"),
                   help="limits storage URI: memory:// (per process) or async+redis://host:6379"
                        " (one global limit); env MESHKIT_RATELIMIT_STORAGE")
    p.add_argument("--nats-url", default=os.environ.get("MESHKIT_NATS_URL", ""),
                   help="NATS with JetStream for the OrderPlaced outbox relay, e.g."
                        " nats://127.0.0.1:4222 (env MESHKIT_NATS_URL; empty: no relay)")
    p.add_argument("--wait-users-s", type=seconds_arg(), default=10.0,
                   help="how long to wait for a user service before serving anyway")
    args = p.parse_args(argv)
    tls_options = tls(args, SERVICE)
    # the settings checked before any wait (the store's, then the user service's): a
    # typo (--host, --rate-limit-storage) ends the start at once, not after the waits
    limits = RateLimitOptions(rules=security.RATE_LIMITS, key=by_identity,
                              storage_uri=args.rate_limit_storage)
    serve_options(args, tls_options, rate_limit=limits)  # built again below, with auth
    store = await open_store_waiting(args.db, args.db_wait_s)
    users_opts = dataclasses.replace(
        mesh.USERS, tls=tls_options, insecure=tls_options is None,
        interceptors=(TokenForwarder(services=(USER_SERVICE,),
                                     # --insecure: the demo's tokens go in the clear
                                     allow_plaintext=tls_options is None),))
    users_channel = meshkit.dial(USER_SERVICE, options=users_opts)
    # renewed certificates reach the signer too (the TLS options reload theirs)
    signer = event_signer(args.cert_dir, SERVICE) if args.cert_dir else None
    jwks: JWKSClient | None = None
    try:
        # A readiness gate: PlaceOrder needs the user service, so do not join the mesh
        # before one is reachable (bounded: after args.wait_users_s serve anyway).
        try:
            await users_channel.wait_for_endpoints(1, timeout_s=args.wait_users_s)
        except TimeoutError:
            _log.warning("no user service endpoint yet; serving anyway",
                         waited_s=args.wait_users_s)
        # closed below (a refresh in flight); the user service's JWKSServer speaks plain
        # http on the hosts the registry announces: the demo trusts its network
        jwks = JWKSClient(jwks_url_from(users_channel), JWKSClientOptions(allow_http=True))
        verifier = JWTVerifier(
            VerifierOptions(issuer=security.ISSUER, audience=security.AUDIENCE), jwks)
        auth = AuthOptions(verifier=verifier, jwt=security.ORDERD_JWT,
                           policy=security.orderd_policy(insecure=tls_options is None))
        async with outbox_relay(store, args.nats_url, signer) as relay:
            servicer = OwnedOrders(store, user_pb2_grpc.UserServiceStub(users_channel),
                                   on_order_placed=relay.notify if relay else None)
            await meshkit.serve(
                SERVICE,
                [(order_pb2_grpc.add_OrderServiceServicer_to_server, servicer)],
                options=serve_options(args, tls_options, auth, limits),
                on_started=announce,
            )
    finally:
        if jwks is not None:
            await jwks.close()
        await users_channel.close()
        await store.close()


if __name__ == "__main__":
    run_service("examples.ecom.order_service", main())  # one line for a bad setting
