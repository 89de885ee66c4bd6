"""ConsulRegistry: a gRPC-checked instance's keeper refused 403 says what to do about the
ACL token, as every other 403 does (2c482a83).

With ``check="grpc"`` the keeper asks the agent for its registration
(``GET /v1/agent/service/<id>``) instead of passing a TTL check. It raised a 403 as a
plain ``ConsulException("HTTP 403: ...")``, which is none of py-consul's
``ACLPermissionDenied``: the status and the warning read ``heartbeat of 'x':
ConsulException: HTTP 403: ACL not found`` without the hint (token refused: unknown,
expired, or lacking the permission) that a TTL heartbeat, a register or a read gives.
"""

from __future__ import annotations

import pytest

from meshkit.discovery._consul import CheckKind, ConsulOptions, ConsulRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

TOKEN = "5b7e0c2a-41d9-4f3e-8a6b-2c9d1e7f3a50"
REFUSED = "the ACL token was refused"


@pytest.mark.parametrize("check", ["grpc", "ttl"], ids=["grpc-lookup", "ttl-control"])
async def test_a_keepers_403_says_the_token_was_refused(check: CheckKind) -> None:
    async with ConsulDouble(required_token=TOKEN) as double:
        registry = ConsulRegistry(ConsulOptions(
            addr=double.addr, token=TOKEN, check=check,
            ttl_s=1.5, check_interval_s=0.5, deregister_critical_after_s=60.0,
            request_timeout_s=2.0, backoff_base_s=0.05, backoff_max_s=0.2))
        try:
            await registry.register(make_instance(unique_service(), 1))
            double.required_token = "another-" + TOKEN  # the token revoked
            await until(lambda: "ACL not found" in str(registry.status().last_error),
                        timeout_s=10.0, what="the keeper refused")
            error = str(registry.status().last_error)
            assert REFUSED in error, error
            assert TOKEN not in error
        finally:
            await registry.close()
