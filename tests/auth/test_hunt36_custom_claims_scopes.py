"""Claims whose scopes a verifier of one's own gave as a list, a tuple or a string."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshkit.auth import AuthOptions, Claims, JWTAuthOptions
from tests.auth.conftest import SERVICE, StartServer, call, rpc_error

JWT = JWTAuthOptions(method_scopes={f"/{SERVICE}/Read": ("orders:read",)})
MD = [("authorization", "Bearer abc.def.ghi")]


class _Introspecting:
    """A verifier mapping an introspection answer to claims, scopes as ``scopes``."""

    def __init__(self, scopes: Any) -> None:
        self.scopes = scopes

    async def verify(self, token: str) -> Claims:
        return Claims(subject="alice", issuer="i", audience=("a",), scopes=self.scopes,
                      expires_at=9e9)


@pytest.mark.parametrize("scopes", [["orders:read"], ("orders:read", "x"), {"orders:read"}],
                         ids=["list", "tuple", "set"])
async def test_scopes_given_as_a_collection_are_checked(
        start_server: StartServer, scopes: Any) -> None:
    """A list or a tuple made the scope check raise AttributeError (no issuperset): every
    call of a method with scopes failed UNKNOWN; they are now taken as the set they hold
    (a frozenset, as ``Claims`` has it, for handlers too)."""
    chain = AuthOptions(verifier=_Introspecting(scopes), jwt=JWT,
                        check_peers=False).interceptors(None)
    port = await start_server(interceptors=chain)
    assert await call(port, "Read", credentials=None, metadata=MD) == b"-|alice"


async def test_scopes_missing_from_a_list_are_refused(start_server: StartServer) -> None:
    chain = AuthOptions(verifier=_Introspecting(["orders:write"]), jwt=JWT,
                        check_peers=False).interceptors(None)
    port = await start_server(interceptors=chain)
    err = await rpc_error(call(port, "Read", credentials=None, metadata=MD))
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                           "token lacks a required scope")


@pytest.mark.parametrize("scopes", ["orders:read", None, [7]], ids=["str", "none", "int"])
async def test_scopes_that_are_no_collection_of_strings_are_refused(
        start_server: StartServer, scopes: Any) -> None:
    """A string (its characters would be scopes), ``None`` or non-strings: the claims
    are refused as any other result that is no claims, never let through on a method
    without scopes either."""
    chain = AuthOptions(verifier=_Introspecting(scopes), jwt=JWT,
                        check_peers=False).interceptors(None)
    port = await start_server(interceptors=chain)
    for name in ("Read", "Whoami"):
        err = await rpc_error(call(port, name, credentials=None, metadata=MD))
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                               "token could not be verified")

