"""The user service process: ``python -m examples.ecom.user_service --instance-id userd-1``.

Registers as ``userd`` in the registry named by ``MESHKIT_REGISTRY`` (default: the local
registry), serves ``ecom.v1.UserService`` over mTLS until SIGTERM/SIGINT, then drains.
Authenticate issues JWT access tokens; their public keys are served as a JWKS on an HTTP
port announced in the instance's registry meta (``jwks_port``).

GetUser reads through a user cache (:mod:`examples.ecom.cache`; UpdateUser invalidates its
entry): ``--user-cache URI`` (env ``ECOM_USER_CACHE``; ``memory://`` by default,
``async+redis://127.0.0.1:6379`` to share it between replicas, ``off`` for none) and
``--user-cache-ttl-s`` (env ``ECOM_USER_CACHE_TTL_S``, default 60).
"""

from __future__ import annotations

import argparse
import os

import meshkit
from examples.ecom import security
from examples.ecom._process import (
    announce,
    jwt_dir,
    open_store_waiting,
    parser,
    run_service,
    seconds_arg,
    serve_options,
    setup_logging,
    tls,
)
from examples.ecom.cache import UserCacheOptions, open_user_cache
from examples.ecom.proto import user_pb2_grpc
from examples.ecom.storage import UserRecord
from examples.ecom.users import IssuedSession, UserServicer
from meshkit.auth import (
    AuthOptions,
    IssuerOptions,
    JWKSServer,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
)

SERVICE = "userd"
TOKEN_TTL_S = 900


class JwtSessions:
    """Issues JWT access tokens as UserService sessions."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self._issuer = issuer

    def __call__(self, user: UserRecord) -> IssuedSession:
        """A token for ``user`` with the ecom scopes, valid ``TOKEN_TTL_S`` seconds."""
        return IssuedSession(self._issuer.issue(user.id, scopes=security.SCOPES), TOKEN_TTL_S)


def arguments() -> argparse.ArgumentParser:
    """The process's command line (its environment defaults read now)."""
    p = parser("user_service", "sqlite:///users.db")
    p.add_argument("--user-cache", default=os.environ.get("ECOM_USER_CACHE", "memory://"),
                   help="GetUser cache: memory://, async+redis://host:6379 or off "
                        "(env ECOM_USER_CACHE; default memory://)")
    p.add_argument("--user-cache-ttl-s", type=seconds_arg("ECOM_USER_CACHE_TTL_S", zero=False),
                   default=os.environ.get("ECOM_USER_CACHE_TTL_S") or "60",
                   help="seconds a cached user is served (env ECOM_USER_CACHE_TTL_S; "
                        "default 60)")
    return p


async def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, open the store, start the JWKS server and serve until a signal."""
    setup_logging()
    args = arguments().parse_args(argv)
    cache = open_user_cache(UserCacheOptions(uri=args.user_cache, ttl_s=args.user_cache_ttl_s))
    tls_options = tls(args, SERVICE)
    # the serve settings (--host, --advertise-host, the admin address) checked before the
    # database wait: a typo ends the start at once, not after --db-wait-s (built again
    # below, with auth)
    serve_options(args, tls_options)
    keys = KeySet.from_directory(jwt_dir(args))
    issuer = TokenIssuer(keys, IssuerOptions(issuer=security.ISSUER, audience=security.AUDIENCE,
                                             ttl_s=TOKEN_TTL_S))
    # Tokens sent to public methods are still verified; the user service trusts its own keys.
    verifier = JWTVerifier(VerifierOptions(issuer=security.ISSUER, audience=security.AUDIENCE),
                           keys)
    jwks = JWKSServer(keys)
    jwks_port = await jwks.start(args.host, 0)
    store = await open_store_waiting(args.db, args.db_wait_s)
    try:
        policy = security.userd_policy(insecure=tls_options is None)
        auth = AuthOptions(verifier=verifier, jwt=security.USERD_JWT, policy=policy)
        await meshkit.serve(
            SERVICE,
            [(user_pb2_grpc.add_UserServiceServicer_to_server,
              UserServicer(store, issue_session=JwtSessions(issuer), cache=cache))],
            options=serve_options(args, tls_options, auth, meta={"jwks_port": str(jwks_port)}),
            on_started=announce,
        )
    finally:
        await jwks.stop()
        await store.close()
        if cache is not None:
            await cache.aclose()


if __name__ == "__main__":
    run_service("examples.ecom.user_service", main())  # one line for a bad setting
