"""Who may call what in the ecom stack: mTLS identities, JWT scopes, and the policies.

* Every process has a workload certificate from the demo's mesh CA (SPIFFE IDs
  ``spiffe://meshkit.local/svc/userd``, ``.../orderd``, ``.../edge`` for the demo client).
* ``UserService.Authenticate`` issues ES256 access tokens (``iss`` :data:`ISSUER`, ``aud``
  :data:`AUDIENCE`, scopes ``orders:read orders:write``); the user service publishes its
  keys as a JWKS on an HTTP port announced in its registry meta (``jwks_port``), where the
  order service finds them.
* ``UserService.GetUser`` may be called by the order service's workload identity only;
  ``UserService.UpdateUser`` by the edge's (:data:`EDGE`) only; CreateUser and
  Authenticate by any mesh workload (the edge signs users up). None of the four needs
  an end-user token.
* Every ``OrderService`` method needs a verified end-user token: ``orders:write`` for
  PlaceOrder, ``orders:read`` for reads; the token's subject must be the user the request
  is about (checked in :mod:`examples.ecom.order_service`). The order service forwards the
  caller's token on its GetUser call, so the user service sees both identities.

Methods are spelled as gRPC names them, ``/ecom.v1.<Service>/<Method>``, here and in
:mod:`examples.ecom.mesh`.
"""

from __future__ import annotations

from meshkit.auth import (
    DEFAULT_TRUST_DOMAIN,
    AuthzPolicy,
    JWTAuthOptions,
    Rule,
    workload_id,
)

TRUST_DOMAIN = DEFAULT_TRUST_DOMAIN
ISSUER = "https://userd.ecom.meshkit.local"
AUDIENCE = "ecom"
SCOPES = ("orders:read", "orders:write")
EDGE = "edge"
"""The demo client's workload name."""

_INFRA = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
"""Health and reflection (both versions a MeshServer serves), by method name: a service
glob (``/grpc.health.v1.Health/*``) would open any look-alike name under it that a
catch-all generic handler serves to any peer, with no token."""


def userd_policy(*, insecure: bool = False) -> AuthzPolicy:
    """UserService policy. With ``insecure`` (plaintext, no workload identities) the
    peer rules cannot match anyone, so they admit anonymous callers instead — which is
    exactly what running without mTLS gives away."""
    any_peer = Rule(allow_peers=("*",), allow_anonymous=insecure)
    return AuthzPolicy(rules={
        "/ecom.v1.UserService/GetUser": Rule(
            allow_peers=(workload_id(TRUST_DOMAIN, "orderd"),), allow_anonymous=insecure),
        "/ecom.v1.UserService/UpdateUser": Rule(
            allow_peers=(workload_id(TRUST_DOMAIN, EDGE),), allow_anonymous=insecure),
        "/ecom.v1.UserService/CreateUser": any_peer,
        "/ecom.v1.UserService/Authenticate": any_peer,
        **{m: any_peer for m in _INFRA},
    })


USERD_JWT = JWTAuthOptions(
    public_methods=("/ecom.v1.UserService/CreateUser", "/ecom.v1.UserService/Authenticate",
                    "/ecom.v1.UserService/GetUser", "/ecom.v1.UserService/UpdateUser",
                    *_INFRA),
)


def orderd_policy(*, insecure: bool = False) -> AuthzPolicy:
    """OrderService policy: any caller with a verified token (scopes checked by
    :data:`ORDERD_JWT`); health and reflection for any peer (anyone when ``insecure``)."""
    return AuthzPolicy(rules={
        "/ecom.v1.OrderService/*": Rule(allow_subjects=("*",)),
        **{m: Rule(allow_peers=("*",), allow_anonymous=insecure) for m in _INFRA},
    })


ORDERD_JWT = JWTAuthOptions(
    public_methods=_INFRA,
    method_scopes={"/ecom.v1.OrderService/PlaceOrder": ("orders:write",),
                   "/ecom.v1.OrderService/*": ("orders:read",)},
)


RATE_LIMITS = {"/ecom.v1.OrderService/ListOrders": "20/second",
               "/ecom.v1.OrderService/PlaceOrder": "100/second"}
"""Per-caller limits of the order service (keyed by token subject, then SPIFFE ID)."""
