"""The ecom policies open health and reflection by method name, not by service glob.

``_INFRA`` was ``("/grpc.health.v1.Health/*",
"/grpc.reflection.v1alpha.ServerReflection/*")``: behind a catch-all generic handler any
look-alike name under those services (``/grpc.health.v1.Health/Evil``) was open to any
peer and needed no token, and reflection v1 (served too) was not opened at all. Now
Check, Watch, List and ServerReflectionInfo (v1 and v1alpha) are named.
"""

from __future__ import annotations

import pytest

from examples.ecom import security

OPEN = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
LOOKALIKES = ("/grpc.health.v1.Health/Evil", "/grpc.health.v1.Health/CheckX",
              "/grpc.reflection.v1alpha.ServerReflection/Other",
              "/grpc.reflection.v1.ServerReflection/Other")


@pytest.mark.parametrize("method", OPEN, ids=[m.rsplit(".", 1)[-1] for m in OPEN])
def test_the_infra_methods_are_open(method: str) -> None:
    for policy in (security.userd_policy(insecure=True), security.orderd_policy(insecure=True)):
        assert policy.evaluate(method, None, None).allowed, (method, policy.rule_for(method))
    assert security.USERD_JWT.is_public(method)
    assert security.ORDERD_JWT.is_public(method)


@pytest.mark.parametrize("method", LOOKALIKES, ids=[m.rsplit(".", 1)[-1] for m in LOOKALIKES])
def test_a_lookalike_under_an_infra_service_is_not_opened(method: str) -> None:
    for policy in (security.userd_policy(insecure=True), security.orderd_policy(insecure=True),
                   security.userd_policy(), security.orderd_policy()):
        assert not policy.evaluate(method, None, None).allowed, (method,
                                                                 policy.rule_for(method))
    assert not security.USERD_JWT.is_public(method)
    assert not security.ORDERD_JWT.is_public(method)
