"""rpc_metrics, RpcMetrics, messaging_metrics and MessagingMetrics given a registry that is
no CollectorRegistry fail with ConfigError naming it: a string raised a bare ``TypeError:
cannot create weak reference to 'str' object``, and MessagingMetrics(None) was taken and
registered its families nowhere (prometheus-client's ``registry=None``), so the
messaging metrics it counted were never scraped."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.messaging import MessagingMetrics, messaging_metrics
from meshkit.observability import RpcMetrics, rpc_metrics

pytestmark = pytest.mark.timeout(60)

_CALLS: dict[str, Callable[[object], object]] = {
    "rpc_metrics": rpc_metrics,  # type: ignore[dict-item]
    "RpcMetrics": RpcMetrics,  # type: ignore[dict-item]
    "messaging_metrics": messaging_metrics,  # type: ignore[dict-item]
    "MessagingMetrics": MessagingMetrics,  # type: ignore[dict-item]
}
_BAD = {"a-string": "meshkit", "the-class": CollectorRegistry, "true": True}


@pytest.mark.parametrize("value", sorted(_BAD))
@pytest.mark.parametrize("call", sorted(_CALLS))
def test_a_registry_that_is_no_registry_is_a_config_error(call: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _CALLS[call](_BAD[value])
    assert "registry" in str(caught.value)


@pytest.mark.parametrize("call", ["RpcMetrics", "MessagingMetrics"])
def test_the_classes_need_a_registry(call: str) -> None:
    with pytest.raises(ConfigError):
        _CALLS[call](None)


def test_registries_still_work() -> None:
    registry = CollectorRegistry()
    assert rpc_metrics(registry) is rpc_metrics(registry)
    assert messaging_metrics(registry) is messaging_metrics(registry)
    assert rpc_metrics(None) is rpc_metrics()
    families = {m.name for m in registry.collect()}
    assert any(name.startswith("meshkit_messaging") for name in families), families
