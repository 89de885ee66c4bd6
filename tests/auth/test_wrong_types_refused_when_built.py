"""Wrong types given to the certificate functions and ``TLSOptions`` are a
``ConfigError`` naming the value when they are called or built, not a ``TypeError``
from deep inside later.

``TLSOptions(clock=time.time())`` (the clock's value, not the clock) was taken, and
``serve()``/``dial()`` then failed with ``'float' object is not callable`` from the TLS
reloader; ``issue_workload(..., dns=None)`` ("no extra names") and
``create_ca(permitted_dns=None)`` failed with ``'NoneType' object is not iterable``.
"""

from __future__ import annotations

import time

import pytest

from meshkit.auth import create_ca, issue_workload
from meshkit.errors import ConfigError
from tests.auth.conftest import TD, Pki


@pytest.mark.parametrize("clock", [None, 12.5], ids=["None", "a float"])
def test_a_clock_that_cannot_be_called_is_refused(pki: Pki, clock: object) -> None:
    pki.issue("orderd")
    with pytest.raises(ConfigError, match=r"clock.*" + repr(clock).replace(".", r"\.")):
        pki.options("orderd", clock=clock)
    assert pki.options("orderd", clock=time.monotonic).clock is time.monotonic


def test_names_given_as_none_are_refused_quoted() -> None:
    key, ca = create_ca(trust_domain=TD)
    for kw in ({"dns": None}, {"ips": None}, {"dns": 5}):
        with pytest.raises(ConfigError, match=repr(next(iter(kw.values())))):
            issue_workload(key, ca, "orderd", **kw)  # type: ignore[arg-type]
    for kw2 in ({"permitted_dns": None}, {"permitted_ips": None}):
        with pytest.raises(ConfigError, match="None"):
            create_ca(trust_domain=TD, **kw2)  # type: ignore[arg-type]
    issue_workload(key, ca, "orderd", dns=(), ips=[])


def test_names_given_as_a_generator_are_read_once() -> None:
    """``create_ca`` checks the permitted DNS subtrees, then writes them: given as a
    generator, the check used them up and the CA permitted none of them (review of
    9e72b65, whose message says the names are taken as a tuple for this; no test)."""
    from meshkit.auth import describe_certificate

    key, ca = create_ca(trust_domain=TD, permitted_dns=(d for d in ("localhost", "internal")))
    permitted = describe_certificate(ca).name_constraints
    assert "DNSName:localhost" in permitted and "DNSName:internal" in permitted, permitted
    _key, leaf = issue_workload(key, ca, "orderd", dns=(d for d in ("orderd.internal",)),
                                ips=(i for i in ("127.0.0.1",)))
    info = describe_certificate(leaf)
    assert "orderd.internal" in info.dns_names and info.ip_addresses == ("127.0.0.1",)
