"""Claims whose subject is not a string (a verifier of one's own mapping a JSON array)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, Claims, Rule
from tests.auth.conftest import StartServer, call, rpc_error

POLICY = AuthzPolicy(rules={"*": Rule(allow_subjects=("*",), deny_subjects=("evil",))})


def _claims(subject: Any) -> Claims:
    return Claims(subject=subject, issuer="i", audience=("a",), scopes=frozenset(),
                  expires_at=9e9)


@pytest.mark.parametrize("subject", [("evil",), ["evil"], 7],
                         ids=["tuple", "list", "int"])
def test_policy_refuses_a_subject_that_is_not_a_string(subject: Any) -> None:
    """``sub: ["evil"]`` read as a tuple got past ``deny_subjects=("evil",)`` and in by
    ``allow_subjects=("*",)`` (a list raised ``TypeError``): now refused."""
    decision = POLICY.evaluate("/a.B/C", None, _claims(subject))
    assert (decision.allowed, decision.code) == (False, grpc.StatusCode.PERMISSION_DENIED)
    assert decision.reason == "subject is not a string"


class _ArraySubject:
    """A verifier that maps a token whose ``sub`` is a JSON array to claims."""

    async def verify(self, token: str) -> Claims:
        return _claims(("evil",))


async def test_interceptor_refuses_claims_whose_subject_is_not_a_string(
        start_server: StartServer) -> None:
    """The JWT check refuses such claims (``UNAUTHENTICATED``) before any handler or policy
    sees them."""
    chain = AuthOptions(verifier=_ArraySubject(), check_peers=False,
                        policy=POLICY).interceptors(None)
    port = await start_server(interceptors=chain)
    err = await rpc_error(call(port, credentials=None,
                               metadata=[("authorization", "Bearer abc.def.ghi")]))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                           "token could not be verified")
