"""What a caller gets when a verifier of one's own (``AuthOptions(verifier=obj)``, an
object with an async ``verify(token)``: token introspection, say) raises."""

from __future__ import annotations

import grpc
import pytest

from meshkit.auth import AuthOptions, Claims, PermissionDeniedError, UnauthenticatedError
from tests.auth.conftest import StartServer, call, rpc_error


class _Raising:
    """A verifier that raises ``exc`` for every token."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def verify(self, token: str) -> Claims:
        raise self.exc


@pytest.mark.parametrize(("exc", "code", "details"), [
    (UnauthenticatedError("token revoked"), grpc.StatusCode.UNAUTHENTICATED, "token revoked"),
    (PermissionDeniedError("account suspended"), grpc.StatusCode.PERMISSION_DENIED,
     "account suspended"),
    (ConnectionError("introspection at 10.0.0.5 down, client_secret=s3cr3t"),
     grpc.StatusCode.UNAUTHENTICATED, "token could not be verified"),
], ids=["UnauthenticatedError", "PermissionDeniedError", "ConnectionError"])
async def test_a_verifier_error_is_answered_with_its_status_and_no_text(
        start_server: StartServer, exc: Exception, code: grpc.StatusCode,
        details: str) -> None:
    """meshkit's own ``UnauthenticatedError`` / ``PermissionDeniedError`` raised by the
    verifier were answered ``UNKNOWN`` with their repr, and any other exception
    ``UNKNOWN`` with its text (a host, a secret) sent to the caller; now the error's own
    status and details, or ``UNAUTHENTICATED`` "token could not be verified"."""
    chain = AuthOptions(verifier=_Raising(exc), check_peers=False).interceptors(None)
    port = await start_server(interceptors=chain)
    err = await rpc_error(call(port, credentials=None,
                               metadata=[("authorization", "Bearer abc.def.ghi")]))
    assert (err.code(), err.details()) == (code, details)


class _Returning:
    """A verifier whose ``verify`` falls off its end (``None``) for an inactive token:
    ``if resp["active"]: return Claims(...)``."""

    async def verify(self, token: str) -> Claims:
        return None  # type: ignore[return-value]


async def test_a_verifier_returning_no_claims_refuses_the_call(
        start_server: StartServer) -> None:
    """A verifier returning ``None`` (no ``Claims``) let the call in as authenticated on a
    method that needs a token; it is now ``UNAUTHENTICATED``."""
    chain = AuthOptions(verifier=_Returning(), check_peers=False).interceptors(None)
    port = await start_server(interceptors=chain)
    err = await rpc_error(call(port, credentials=None,
                               metadata=[("authorization", "Bearer abc.def.ghi")]))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "token could not be verified")
