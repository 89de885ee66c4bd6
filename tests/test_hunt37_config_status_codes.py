"""A status-code set given with an unhashable element (a list of codes nested in the list,
as a YAML or JSON config loader hands it over: ``retryable_codes: [[UNAVAILABLE]]``) fails
at construction with a ConfigError naming the field, not a bare ``TypeError: unhashable
type: 'list'`` that names nothing."""

from __future__ import annotations

import grpc
import pytest

from meshkit._config import check_status_codes
from meshkit.balancer import OutlierOptions
from meshkit.errors import ConfigError
from meshkit.resilience import RetryPolicy

_NESTED = ([grpc.StatusCode.UNAVAILABLE],)


@pytest.mark.parametrize("bad", [[[grpc.StatusCode.UNAVAILABLE]],
                                 [{grpc.StatusCode.UNAVAILABLE}],
                                 [grpc.StatusCode.UNAVAILABLE, {"code": 14}]],
                         ids=["list-in-list", "set-in-list", "dict-after-a-code"])
def test_an_unhashable_element_is_a_config_error_naming_the_field(bad: list[object]) -> None:
    """check_status_codes refuses an unhashable element as it refuses any other non-code."""
    with pytest.raises(ConfigError, match=r"retryable_codes must hold grpc\.StatusCode"):
        check_status_codes("retryable_codes", bad)


def test_retry_policy_with_nested_codes_fails_at_construction() -> None:
    """RetryPolicy(retryable_codes=[[UNAVAILABLE]]) is a ConfigError quoting the element."""
    with pytest.raises(ConfigError, match=r"retryable_codes .*\[<StatusCode\.UNAVAILABLE"):
        RetryPolicy(retryable_codes=list(_NESTED))  # type: ignore[list-item]


def test_outlier_options_with_nested_codes_fails_at_construction() -> None:
    """OutlierOptions(failure_codes=[[UNAVAILABLE]]) is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match=r"failure_codes must hold grpc\.StatusCode"):
        OutlierOptions(failure_codes=list(_NESTED))  # type: ignore[list-item]


def test_good_codes_still_come_back_as_a_frozenset() -> None:
    """A list, a generator and a set of codes each give the frozenset of those codes."""
    codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED]
    want = frozenset(codes)
    assert check_status_codes("c", codes) == want
    assert check_status_codes("c", (c for c in codes)) == want
    assert check_status_codes("c", set(codes)) == want
    assert check_status_codes("c", codes + codes) == want
