"""ConsulOptions and EtcdOptions: intervals small enough to make a heartbeat, a
keep-alive, a watch or a retry loop run without pause are refused when the options are
built (the local registry's floors: 0.1 s for a TTL, 0.01 s for an interval)."""

from __future__ import annotations

import pytest

from meshkit.discovery import ConsulOptions, EtcdOptions
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("kwargs", [
    {"ttl_s": 0.001}, {"ttl_s": 0.05}, {"watch_query_interval_s": 1e-9},
    {"watch_query_interval_s": 0.001}, {"check": "grpc", "check_interval_s": 0.001},
    {"backoff_base_s": 1e-9, "backoff_max_s": 1e-9}])
def test_consul_intervals_that_make_a_busy_loop_are_refused(
        kwargs: dict[str, object]) -> None:
    """A TTL, check interval, watch rate limit or retry cap small enough to loop without
    pause (a typo, 0.0015 for 15; a unit slip, ms for s) was taken: ttl_s=0.001 passed
    the check every 0.3 ms for each instance, watch_query_interval_s=1e-9 let a churning
    index be polled in a busy loop, check_interval_s=0.001 looked each gRPC-checked
    instance up a thousand times a second, and backoff_max_s=1e-9 retried a down agent
    without pause, each keeping a core and the agent busy. A ConfigError names the field
    and quotes the value, from the URI too."""
    name = [k for k in kwargs if k != "check"][-1]
    with pytest.raises(ConfigError, match=f"{name} must be at least"):
        ConsulOptions(**kwargs)  # type: ignore[arg-type]
    query = "&".join(f"{k}={v}" for k, v in kwargs.items())
    with pytest.raises(ConfigError, match=f"{name} must be at least"):
        ConsulOptions.from_uri(f"consul://127.0.0.1:8500?{query}", environ={})


@pytest.mark.parametrize("kwargs", [
    {"keepalive_interval_s": 1e-9}, {"keepalive_interval_s": 0.001},
    {"backoff_base_s": 1e-9, "backoff_max_s": 1e-9}])
def test_etcd_intervals_that_make_a_busy_loop_are_refused(kwargs: dict[str, object]) -> None:
    """A keep-alive interval or retry cap small enough to loop without pause was taken:
    keepalive_interval_s=1e-9 renewed the lease in a busy loop (a request to etcd each
    time), backoff_max_s=1e-9 retried an unreachable cluster without pause. A
    ConfigError names the field and quotes the value, from the URI too."""
    name = list(kwargs)[-1]
    with pytest.raises(ConfigError, match=f"{name} must be at least"):
        EtcdOptions(**kwargs)  # type: ignore[arg-type]
    query = "&".join(f"{k}={v}" for k, v in kwargs.items())
    with pytest.raises(ConfigError, match=f"{name} must be at least"):
        EtcdOptions.from_uri(f"etcd://127.0.0.1:2379?{query}", environ={})


def test_the_smallest_intervals_allowed_are_taken() -> None:
    """The floors themselves are valid (tests and fast failover setups use values near
    them)."""
    ConsulOptions(ttl_s=0.1, watch_query_interval_s=0.01, check="grpc",
                  check_interval_s=0.01, backoff_base_s=0.01, backoff_max_s=0.01)
    EtcdOptions(ttl_s=1, keepalive_interval_s=0.01, backoff_base_s=0.01, backoff_max_s=0.01)
