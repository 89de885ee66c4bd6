"""A public class given something else where its options object goes (the path, address
or storage URI the options would have held, another options class, ``True``) fails where
it is given, ConfigError naming the parameter, as dial(), MeshServer, RetryInterceptor,
RetryBudget and JWKSClient already did: these raised a bare ``AttributeError: 'str' object
has no attribute 'path'`` (``LocalRegistry("/var/lib/mesh")``), ``... 'rules'``
(``StorageLimiter("redis://...")``) and so on, and ``ConsulRegistry("127.0.0.1:8500")``
took it and failed at its first ``register()``. A value that may hold a credential (a
registry or storage URI) is named by its type only, never quoted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshkit import DialOptions
from meshkit.auth import IssuerOptions, TokenVerifier, VerifierOptions
from meshkit.balancer import P2C, EjectingBalancer, OutlierOptions, P2COptions
from meshkit.discovery import (
    ConsulOptions,
    ConsulRegistry,
    EtcdOptions,
    EtcdRegistry,
    LocalOptions,
    LocalRegistry,
)
from meshkit.errors import ConfigError
from meshkit.observability import (
    AdminServer,
    AttemptSpanInterceptor,
    TelemetryClientInterceptor,
    TelemetryOptions,
    TelemetryServerInterceptor,
)
from meshkit.resilience import RateLimitInterceptor, RateLimitOptions, StorageLimiter

pytestmark = pytest.mark.timeout(60)

_SECRET = "s3cr3t-pw"

# (what is called, the parameter named, whether the value given is quoted)
_WRONG: dict[str, tuple[Callable[[], object], str, str | None]] = {
    "LocalRegistry-path": (lambda: LocalRegistry("/var/lib/mesh"),  # type: ignore[arg-type]
                           "options", "'/var/lib/mesh'"),
    "LocalRegistry-etcd-options": (lambda: LocalRegistry(EtcdOptions()),  # type: ignore[arg-type]
                                   "options", None),
    "EtcdRegistry-address": (
        lambda: EtcdRegistry(f"http://root:{_SECRET}@127.0.0.1:2379"),  # type: ignore[arg-type]
        "options", None),
    "ConsulRegistry-address": (
        lambda: ConsulRegistry(f"http://u:{_SECRET}@127.0.0.1:8500"),  # type: ignore[arg-type]
        "options", None),
    "ConsulRegistry-local-options": (
        lambda: ConsulRegistry(LocalOptions()),  # type: ignore[arg-type]
        "options", None),
    "StorageLimiter-uri": (
        lambda: StorageLimiter(f"redis://:{_SECRET}@127.0.0.1:6379"),  # type: ignore[arg-type]
        "options", None),
    "RateLimitInterceptor-uri": (
        lambda: RateLimitInterceptor(f"redis://:{_SECRET}@127.0.0.1:6379"),  # type: ignore[arg-type]
        "options", None),
    "AdminServer-port": (lambda: AdminServer(9090),  # type: ignore[arg-type]
                         "options", "9090"),
    "TelemetryClientInterceptor-true": (
        lambda: TelemetryClientInterceptor(True),  # type: ignore[arg-type]
        "options", "True"),
    "AttemptSpanInterceptor-true": (
        lambda: AttemptSpanInterceptor(True),  # type: ignore[arg-type]
        "options", "True"),
    "TelemetryServerInterceptor-dial-options": (
        lambda: TelemetryServerInterceptor("orderd", DialOptions()),  # type: ignore[arg-type]
        "options", "DialOptions("),
    "P2C-outlier-options": (lambda: P2C(OutlierOptions()),  # type: ignore[arg-type]
                            "options", "OutlierOptions("),
    "EjectingBalancer-p2c-options": (
        lambda: EjectingBalancer(P2C(), P2COptions()),  # type: ignore[arg-type]
        "options", "P2COptions("),
    "EjectingBalancer-class-as-inner": (lambda: EjectingBalancer(P2C),  # type: ignore[arg-type]
                                        "inner", "P2C"),
    "EjectingBalancer-name-as-inner": (lambda: EjectingBalancer("p2c"),  # type: ignore[arg-type]
                                       "inner", "'p2c'"),
    "TokenVerifier-issuer-options": (
        lambda: TokenVerifier(IssuerOptions(  # type: ignore[arg-type]
            issuer="https://issuer.test", audience="meshkit")),
        "options", "IssuerOptions("),
}


@pytest.mark.parametrize("case", sorted(_WRONG))
def test_a_wrong_options_object_fails_where_it_is_given(case: str) -> None:
    make, name, shown = _WRONG[case]
    with pytest.raises(ConfigError) as caught:
        make()
    text = str(caught.value)
    assert text.startswith(name) or f" {name} " in text, text
    if shown is not None:
        assert shown in text, text
    assert _SECRET not in text and _SECRET not in repr(caught.value.__cause__)


_RIGHT: dict[str, Callable[[], object]] = {
    "LocalRegistry": lambda: LocalRegistry(LocalOptions()),
    "LocalRegistry-default": lambda: LocalRegistry(),
    "EtcdRegistry": lambda: EtcdRegistry(EtcdOptions()),
    "ConsulRegistry": lambda: ConsulRegistry(ConsulOptions()),
    "StorageLimiter": lambda: StorageLimiter(RateLimitOptions()),
    "StorageLimiter-default": lambda: StorageLimiter(),
    "RateLimitInterceptor": lambda: RateLimitInterceptor(RateLimitOptions()),
    "TelemetryClientInterceptor": lambda: TelemetryClientInterceptor(TelemetryOptions()),
    "AttemptSpanInterceptor": lambda: AttemptSpanInterceptor(TelemetryOptions()),
    "TelemetryServerInterceptor": lambda: TelemetryServerInterceptor("orderd",
                                                                     TelemetryOptions()),
    "P2C": lambda: P2C(P2COptions()),
    "EjectingBalancer": lambda: EjectingBalancer(P2C(), OutlierOptions()),
    "TokenVerifier": lambda: TokenVerifier(VerifierOptions(issuer="https://issuer.test",
                                                           audience="meshkit")),
}


@pytest.mark.parametrize("case", sorted(_RIGHT))
def test_the_right_options_object_is_still_taken(case: str) -> None:
    _RIGHT[case]()


@pytest.mark.parametrize("value", ["a-string", "the-class"])
def test_admin_server_dashboard_registry_that_is_no_registry_fails_where_given(
        value: str) -> None:
    """It raised a bare TypeError (cannot create weak reference to 'str' object), or
    took the class and failed at the first dashboard read."""
    from prometheus_client import CollectorRegistry

    bad = {"a-string": "meshkit", "the-class": CollectorRegistry}[value]
    with pytest.raises(ConfigError) as caught:
        AdminServer(dashboard_registry=bad)  # type: ignore[arg-type]
    assert "dashboard_registry" in str(caught.value)
    AdminServer(dashboard_registry=CollectorRegistry())
