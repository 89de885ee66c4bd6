"""``meshkit call SERVICE/Method --service OTHER``: two services named, a usage error."""

from __future__ import annotations

import pytest

from meshkit._cli.call import CallError, Target, parse_target


def test_a_service_option_beside_a_service_target_must_agree() -> None:
    """``--service`` names the mesh service of a ``/pkg.Svc/Method`` target; given with
    a ``SERVICE/Method`` target naming another (``greeter/SayHello --service
    greeter-canary``, meant for the canary), it was ignored without a word and the call
    went to ``greeter``. Two different services are now a usage error naming both; the
    same one twice is what it says."""
    with pytest.raises(CallError) as refused:
        parse_target("greeter/SayHello", "greeter-canary")
    assert "'greeter'" in str(refused.value) and "'greeter-canary'" in str(refused.value)
    with pytest.raises(CallError, match="--service"):
        parse_target("greeter/pkg.Greeter/SayHello", "other")
    assert parse_target("greeter/SayHello", "greeter") == Target("greeter", None, "SayHello")
    assert parse_target("/pkg.Greeter/SayHello", "greeter") == Target(
        "greeter", "pkg.Greeter", "SayHello")
