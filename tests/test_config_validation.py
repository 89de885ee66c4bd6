"""A wrong config fails at construction with the bad value quoted: the checks every options
class shares (:mod:`meshkit._config`) and the faults they closed: a string given for a
collection, names or numbers for status codes, ``True`` or a string for a number, counts
that are not integers, infinite seconds, the local registry URI's blank values, and the
auth, retry, publish and admin-port options."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshkit import DialOptions, ServeOptions, ServerLimits
from meshkit._config import (
    check_int,
    check_metadata_key,
    check_number,
    check_seconds,
    check_status_codes,
    check_strings,
)
from meshkit.auth import AuthOptions, JWTAuthOptions
from meshkit.auth._jwks import JWKSClientOptions
from meshkit.auth._jwt import IssuerOptions, VerifierOptions
from meshkit.balancer import OutlierOptions, P2COptions
from meshkit.discovery import LocalOptions, registry_from_env, registry_from_uri
from meshkit.discovery._options import check_seconds as discovery_check_seconds
from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions, PublishOptions, RelayOptions
from meshkit.observability import TelemetryOptions
from meshkit.resilience import (
    Backoff,
    BudgetOptions,
    DeadlineOptions,
    RateLimitOptions,
    RetryPolicy,
)

Build = Callable[[], object]


def _verifier(**kw: Any) -> VerifierOptions:
    return VerifierOptions(issuer="https://issuer", audience="orders", **kw)


def _consumer(**kw: Any) -> ConsumerOptions:
    return ConsumerOptions(stream="ORDERS", durable="worker", **kw)


def _local(tmp: Path = Path("/tmp/meshkit-config-validation.db"), **kw: Any) -> LocalOptions:
    return LocalOptions(path=tmp, **kw)


def _refused_quoting(build: Build, value: object) -> str:
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert repr(value) in message, message
    return message


# -- the shared checks -------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, "1", None, math.nan, math.inf, -1, -0.5])
def test_check_number_refuses(value: object) -> None:
    """Not a number (bool and str included), NaN, inf (``finite``) or out of range."""
    _refused_quoting(lambda: check_number("grace_s", value), value)


def test_check_number_bounds_and_infinity() -> None:
    """Open and closed bounds, and ``finite=False`` for fields where inf means "none"."""
    check_number("x", 0)
    check_number("x", 1.0, low_open=True, high=1.0)
    check_number("x", math.inf, finite=False)
    with pytest.raises(ConfigError, match=r"x must be in \(0, 1\], got 0"):
        check_number("x", 0, low_open=True, high=1.0)
    with pytest.raises(ConfigError, match="must be a number of seconds, got '1'"):
        check_number("ttl_s", "1")
    with pytest.raises(ConfigError, match="x must be > 0, got nan"):
        check_number("x", math.nan, low_open=True, finite=False)


@pytest.mark.parametrize("value", [True, 2.0, 2.5, math.nan, math.inf, "3", 0])
def test_check_int_refuses(value: object) -> None:
    """Counts are ints: not bool, not a float (even a whole one), not below ``low``."""
    _refused_quoting(lambda: check_int("batch_size", value), value)


def test_check_seconds_is_shared_with_discovery() -> None:
    """The registries' options use the same check (re-exported for old imports)."""
    assert discovery_check_seconds is check_seconds


def test_check_collections_and_keys() -> None:
    """Strings for collections, status names/numbers and bad metadata keys are refused."""
    assert check_strings("tags", ["a", "b"]) == ("a", "b")
    _refused_quoting(lambda: check_strings("tags", "ab"), "ab")
    _refused_quoting(lambda: check_strings("tags", ("a", 1)), 1)
    codes = check_status_codes("codes", [grpc.StatusCode.UNAVAILABLE])
    assert codes == frozenset({grpc.StatusCode.UNAVAILABLE})
    _refused_quoting(lambda: check_status_codes("codes", "UNAVAILABLE"), "UNAVAILABLE")
    check_metadata_key("key", "idempotency-key")
    for key in ("Key", "", "k-bin", ":path", 3):
        _refused_quoting(lambda key=key: check_metadata_key("key", key), key)


# -- a string where a collection of strings is expected ------------------------------------


@pytest.mark.parametrize(("build", "value"), [
    pytest.param(lambda: ServeOptions(tags="v2"), "v2", id="ServeOptions.tags"),
    pytest.param(lambda: TelemetryOptions(log_metadata="x-request-id"), "x-request-id",
                 id="TelemetryOptions.log_metadata"),
    pytest.param(lambda: TelemetryOptions(quiet_methods="Svc/M"), "Svc/M",
                 id="TelemetryOptions.quiet_methods"),
    pytest.param(lambda: _verifier(required_claims="sub"), "sub",
                 id="VerifierOptions.required_claims"),
    pytest.param(lambda: _verifier(algorithms="ES256"), "ES256",
                 id="VerifierOptions.algorithms"),
    pytest.param(lambda: JWTAuthOptions(default_scopes="orders.read"), "orders.read",
                 id="JWTAuthOptions.default_scopes"),
    pytest.param(lambda: RetryPolicy(retryable_codes="UNAVAILABLE"), "UNAVAILABLE",
                 id="RetryPolicy.retryable_codes"),
    pytest.param(lambda: OutlierOptions(failure_codes="UNAVAILABLE"), "UNAVAILABLE",
                 id="OutlierOptions.failure_codes"),
])
def test_string_for_a_collection_is_refused(build: Build, value: str) -> None:
    """A bare string for a tuple field is refused, not split into its characters
    (``tags="v2"`` registering tags ``v`` and ``2``, ``default_scopes="orders.read"``
    requiring the scopes ``o``, ``r``...)."""
    assert "string" in _refused_quoting(build, value)


def test_collections_still_take_any_iterable() -> None:
    """Lists and sets still work for the collection fields and end as tuples/frozensets."""
    assert ServeOptions(tags=["v2", "canary"]).tags == ("v2", "canary")
    assert JWTAuthOptions(default_scopes=["orders.read"]).default_scopes == ("orders.read",)
    assert _verifier(required_claims=["sub"]).required_claims == ("sub",)
    policy = RetryPolicy(retryable_codes=[grpc.StatusCode.UNAVAILABLE])
    assert policy.retryable_codes == frozenset({grpc.StatusCode.UNAVAILABLE})


@pytest.mark.parametrize(("build", "value"), [
    pytest.param(lambda: RetryPolicy(retryable_codes={"UNAVAILABLE"}), "UNAVAILABLE",
                 id="RetryPolicy.retryable_codes-str"),
    pytest.param(lambda: RetryPolicy(retryable_codes={14}), 14,
                 id="RetryPolicy.retryable_codes-int"),
    pytest.param(lambda: OutlierOptions(failure_codes={"UNAVAILABLE"}), "UNAVAILABLE",
                 id="OutlierOptions.failure_codes-str"),
    pytest.param(lambda: OutlierOptions(failure_codes={14}), 14,
                 id="OutlierOptions.failure_codes-int"),
])
def test_status_code_sets_hold_status_codes(build: Build, value: object) -> None:
    """A status name or number never equals a ``grpc.StatusCode``: the policy would never
    retry, the detector never count a failure. Refused, the element quoted."""
    _refused_quoting(build, value)


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    pytest.param(lambda: RetryPolicy(max_attempts=True), id="RetryPolicy.max_attempts"),
    pytest.param(lambda: PublishOptions(max_attempts=True), id="PublishOptions.max_attempts"),
    pytest.param(lambda: _consumer(max_deliveries=True), id="ConsumerOptions.max_deliveries"),
    pytest.param(lambda: _consumer(batch_size=True), id="ConsumerOptions.batch_size"),
    pytest.param(lambda: RelayOptions(batch_size=True), id="RelayOptions.batch_size"),
    pytest.param(lambda: ServerLimits(max_concurrent_rpcs=True),
                 id="ServerLimits.max_concurrent_rpcs"),
    pytest.param(lambda: ServerLimits(keepalive_time_s=True),
                 id="ServerLimits.keepalive_time_s"),
    pytest.param(lambda: OutlierOptions(consecutive_failures=True),
                 id="OutlierOptions.consecutive_failures"),
    pytest.param(lambda: RateLimitOptions(breaker_failures=True),
                 id="RateLimitOptions.breaker_failures"),
    pytest.param(lambda: Backoff(multiplier=True), id="Backoff.multiplier"),
    pytest.param(lambda: BudgetOptions(retry_ratio=True), id="BudgetOptions.retry_ratio"),
    pytest.param(lambda: DialOptions(timeout_s=True), id="DialOptions.timeout_s"),
    pytest.param(lambda: DialOptions(method_timeouts={"Svc/M": True}),
                 id="DialOptions.method_timeouts"),
    pytest.param(lambda: ServeOptions(grace_s=True), id="ServeOptions.grace_s"),
    pytest.param(lambda: ServeOptions(weight=True), id="ServeOptions.weight"),
    pytest.param(lambda: P2COptions(decay_s=True), id="P2COptions.decay_s"),
    pytest.param(lambda: _local(ttl_s=True), id="LocalOptions.ttl_s"),
    pytest.param(lambda: IssuerOptions(issuer="i", audience="a", ttl_s=True),
                 id="IssuerOptions.ttl_s"),
    pytest.param(lambda: JWKSClientOptions(fetch_timeout_s=True),
                 id="JWKSClientOptions.fetch_timeout_s"),
])
def test_bool_for_a_number_is_refused(build: Build) -> None:
    """``True`` is an ``int`` in Python: ``max_attempts=True`` would be one attempt,
    ``timeout_s=True`` one second; almost always a misplaced flag."""
    _refused_quoting(build, True)


@pytest.mark.parametrize("build", [
    pytest.param(lambda: Backoff(base_delay_s="0.1"), id="Backoff.base_delay_s"),
    pytest.param(lambda: RetryPolicy(max_pushback_s="0.1"), id="RetryPolicy.max_pushback_s"),
    pytest.param(lambda: DialOptions(timeout_s="0.1"), id="DialOptions.timeout_s"),
    pytest.param(lambda: ServeOptions(grace_s="0.1"), id="ServeOptions.grace_s"),
    pytest.param(lambda: ServerLimits(keepalive_time_s="0.1"),
                 id="ServerLimits.keepalive_time_s"),
    pytest.param(lambda: OutlierOptions(base_ejection_s="0.1"),
                 id="OutlierOptions.base_ejection_s"),
    pytest.param(lambda: P2COptions(decay_s="0.1"), id="P2COptions.decay_s"),
    pytest.param(lambda: _local(ttl_s="0.1"), id="LocalOptions.ttl_s"),
    pytest.param(lambda: _verifier(leeway_s="0.1"), id="VerifierOptions.leeway_s"),
    pytest.param(lambda: BudgetOptions(ttl_s="0.1"), id="BudgetOptions.ttl_s"),
    pytest.param(lambda: _consumer(ack_wait_s="0.1"), id="ConsumerOptions.ack_wait_s"),
    pytest.param(lambda: DeadlineOptions(min_remaining_s="0.1"),
                 id="DeadlineOptions.min_remaining_s"),
])
def test_string_for_a_number_is_a_config_error(build: Build) -> None:
    """A number given as a string (from a config file or the environment) is a ConfigError
    quoting it, not a bare ``TypeError`` from a comparison."""
    _refused_quoting(build, "0.1")


@pytest.mark.parametrize("value", [0, -1, math.nan, "1", 2.5, True])
def test_serve_options_weight_is_checked(value: object) -> None:
    """``weight`` (>= 1) is checked at construction, not when the server registers."""
    _refused_quoting(lambda: ServeOptions(weight=value), value)


@pytest.mark.parametrize(("build", "value"), [
    pytest.param(lambda: OutlierOptions(consecutive_failures=math.nan), math.nan,
                 id="OutlierOptions.consecutive_failures-nan"),
    pytest.param(lambda: OutlierOptions(consecutive_failures=math.inf), math.inf,
                 id="OutlierOptions.consecutive_failures-inf"),
    pytest.param(lambda: OutlierOptions(consecutive_failures=2.5), 2.5,
                 id="OutlierOptions.consecutive_failures-2.5"),
    pytest.param(lambda: OutlierOptions(failure_rate_window=math.nan), math.nan,
                 id="OutlierOptions.failure_rate_window-nan"),
    pytest.param(lambda: _verifier(cache_size=math.nan), math.nan,
                 id="VerifierOptions.cache_size-nan"),
    pytest.param(lambda: _verifier(cache_size=math.inf), math.inf,
                 id="VerifierOptions.cache_size-inf"),
    pytest.param(lambda: _verifier(cache_size=2.5), 2.5, id="VerifierOptions.cache_size-2.5"),
    pytest.param(lambda: ServeOptions(maximum_concurrent_rpcs=math.nan), math.nan,
                 id="ServeOptions.maximum_concurrent_rpcs-nan"),
    pytest.param(lambda: ServeOptions(maximum_concurrent_rpcs=math.inf), math.inf,
                 id="ServeOptions.maximum_concurrent_rpcs-inf"),
    pytest.param(lambda: ServeOptions(maximum_concurrent_rpcs=2.5), 2.5,
                 id="ServeOptions.maximum_concurrent_rpcs-2.5"),
    pytest.param(lambda: JWKSClientOptions(max_document_bytes=math.inf), math.inf,
                 id="JWKSClientOptions.max_document_bytes-inf"),
])
def test_counts_must_be_integers(build: Build, value: object) -> None:
    """Counts are integers: ``nan < 1`` is False, so a NaN count passed the range check
    (a detector that never ejects; a NaN cap handed to ServerLimits at serve time)."""
    _refused_quoting(build, value)


@pytest.mark.parametrize("build", [
    pytest.param(lambda: ServerLimits(keepalive_time_s=math.inf),
                 id="ServerLimits.keepalive_time_s"),
    pytest.param(lambda: ServerLimits(keepalive_timeout_s=math.inf),
                 id="ServerLimits.keepalive_timeout_s"),
    pytest.param(lambda: ServerLimits(max_connection_idle_s=math.inf),
                 id="ServerLimits.max_connection_idle_s"),
    pytest.param(lambda: Backoff(base_delay_s=math.inf, max_delay_s=math.inf),
                 id="Backoff.base_delay_s"),
    pytest.param(lambda: _local(ttl_s=math.inf), id="LocalOptions.ttl_s"),
    pytest.param(lambda: _local(poll_interval_s=math.inf), id="LocalOptions.poll_interval_s"),
    pytest.param(lambda: DeadlineOptions(min_remaining_s=math.inf),
                 id="DeadlineOptions.min_remaining_s"),
    pytest.param(lambda: BudgetOptions(ttl_s=math.inf), id="BudgetOptions.ttl_s"),
    pytest.param(lambda: BudgetOptions(min_retries_per_s=math.inf),
                 id="BudgetOptions.min_retries_per_s"),
    pytest.param(lambda: RateLimitOptions(storage_timeout_s=math.inf),
                 id="RateLimitOptions.storage_timeout_s"),
    pytest.param(lambda: DialOptions(deadline_margin_s=math.inf),
                 id="DialOptions.deadline_margin_s"),
    pytest.param(lambda: ServeOptions(drain_delay_s=math.inf),
                 id="ServeOptions.drain_delay_s"),
])
def test_infinite_seconds_are_refused(build: Build) -> None:
    """``inf`` passes a ``value > 0`` check but is meaningless here (ServerLimits'
    ``channel_args()`` died on ``int(inf * 1000)``; ``None`` already means "never")."""
    _refused_quoting(build, math.inf)


@pytest.mark.parametrize("ttl_s", [1e-310, 5e-324, 1e-6])
def test_a_budget_window_too_small_to_count_in_is_refused(ttl_s: float) -> None:
    """``BudgetOptions(ttl_s=1e-310)`` passed its check (> 0) and ``RetryBudget`` then
    failed with a bare ``OverflowError`` (``5e-324``: ``ZeroDivisionError``), its buckets
    ``ttl_s / 10`` wide and the clock divided by that; a window under a millisecond is
    now a ConfigError quoting it, and a millisecond still counts."""
    from meshkit.resilience import RetryBudget

    _refused_quoting(lambda: BudgetOptions(ttl_s=ttl_s), ttl_s)
    assert RetryBudget(BudgetOptions(ttl_s=0.001)).options.ttl_s == 0.001


def test_where_infinity_means_no_bound_it_is_kept() -> None:
    """Fields where inf reads as "no cap" keep accepting it."""
    assert Backoff(max_delay_s=math.inf).max_delay_s == math.inf
    assert DialOptions(timeout_s=math.inf).timeout_s == math.inf
    assert ServerLimits(keepalive_time_s=30, max_connection_idle_s=None).channel_args()


# -- MESHKIT_REGISTRY local:// --------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "ttl_s=", "ttl_s", "poll_interval_s=&ttl_s=5", "ttl_s=inf", "ttl_s=nan", "ttl_s=x",
])
def test_local_uri_bad_query_value_is_an_error(query: str) -> None:
    """A blank value is an error naming the key (it was dropped, keeping the default),
    as for the Consul and etcd URIs; so are ``inf`` and ``nan``."""
    with pytest.raises(ConfigError, match=r"ttl_s|poll_interval_s"):
        registry_from_uri(f"local:///tmp/meshkit-config-validation.db?{query}")


def test_local_uri_unknown_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'ttl'"):
        registry_from_uri("local:///tmp/meshkit-config-validation.db?ttl=3")


@pytest.mark.parametrize("uri", [
    "local:///tmp/meshkit-config-validation?ttl_s=3s",
    "local:///tmp/meshkit-config-validation?ttl_s=",
    "consul://consul:8500?ttl_s=15s",
    "consul://consul:8500?verify=maybe",
    "etcd://etcd:2379?request_timeout_s=2s",
], ids=["local", "local-blank", "consul", "consul-bool", "etcd"])
def test_registry_env_option_error_quotes_the_uri(uri: str) -> None:
    """A value that is not a number (a Go-style duration, ``?ttl_s=3s``) or a boolean in
    the URI of ``MESHKIT_REGISTRY``: the ConfigError names the key and quotes the URI
    (``registry_from_uri``'s promise), so an operator with several configuration sources
    knows where ``ttl_s`` came from. It used to say only ``ttl_s must be a number, got
    '3s'``."""
    if uri.startswith("consul"):
        pytest.importorskip("consul")
    with pytest.raises(ConfigError) as info:
        registry_from_env({"MESHKIT_REGISTRY": uri})
    text = str(info.value)
    assert repr(uri) in text, text
    assert ("verify" if "verify" in uri else "_s") in text.split(" ", 1)[0], text


def test_consul_uri_error_masks_the_value_of_a_key_that_is_no_option() -> None:
    """A Consul URI is quoted in its errors, but the value of a key that is no option (a
    token under another name, ``?acl_token=...``) is masked: it must not reach a log."""
    pytest.importorskip("consul")
    with pytest.raises(ConfigError) as info:
        registry_from_env({"MESHKIT_REGISTRY": "consul://h:8500?acl_token=s3cret&ttl_s=3"})
    assert "s3cret" not in str(info.value)
    assert "'acl_token'" in str(info.value) and "acl_token=***&ttl_s=3" in str(info.value)


_PW = "S3cretPw-do-not-print"


def test_local_uri_error_masks_the_value_of_a_key_that_is_no_option() -> None:
    """A local:// URI's error masks the value of a key that is no option, as the Consul
    URI's does (``?password=...`` was quoted in clear)."""
    with pytest.raises(ConfigError) as info:
        registry_from_uri(f"local:///tmp/meshkit-config-validation.db?password={_PW}&ttl_s=3")
    text = str(info.value)
    assert _PW not in text, text
    assert "'password'" in text and "password=***&ttl_s=3" in text, text


@pytest.mark.parametrize("uri", [
    f"https://root:{_PW}@127.0.0.1:2379", f"etcds://root:{_PW}@127.0.0.1:2379",
    f"etcds://{_PW}@127.0.0.1:2379", f"zk://127.0.0.1:2181/x?auth={_PW}#{_PW}",
    f"root:{_PW}@127.0.0.1:2379",
    # a password holding an unencoded '/', '?' or '#' (generated passwords do): the
    # user info was taken to end at the first '/', so these were quoted whole
    f"https://root:pa/{_PW}@127.0.0.1:2379", f"https://root:{_PW}?x@127.0.0.1:2379",
    f"https://root:pa#{_PW}@127.0.0.1:2379", f"root:pa/{_PW}@127.0.0.1:2379",
])
def test_unknown_registry_scheme_error_hides_user_info_and_query_values(uri: str) -> None:
    """A URI of an unknown scheme (an etcd member's URL given as it is, a typo for
    ``etcd+https``) is quoted redacted: user info and query values masked. It was quoted
    whole, so ``meshkit services --registry https://root:<password>@...`` printed the
    password; user info is everything up to the last '@', whatever the password holds."""
    with pytest.raises(ConfigError) as info:
        registry_from_uri(uri)
    text = str(info.value)
    assert _PW not in text, text
    assert "unknown registry URI" in text and "***" in text, text
    assert "127.0.0.1:2" in text, text


@pytest.mark.parametrize("addr", [
    f"http://root:{_PW}@127.0.0.1:2379", f"root:{_PW}@127.0.0.1:2379",
    f"{_PW}@127.0.0.1:2379", f"ftp://root:{_PW}@127.0.0.1:2379",
    f"http://root:{_PW}@127.0.0.1:99999",
])
def test_registry_address_with_user_info_error_hides_it(addr: str) -> None:
    """A Consul address or etcd endpoint with user info (``ETCDCTL_ENDPOINTS`` or
    ``CONSUL_HTTP_ADDR`` as ``http://root:<password>@host:port``) is refused without
    quoting the user info (the whole address was quoted, password and all), whichever
    check refuses it."""
    from meshkit.discovery import EtcdOptions

    errors = []
    with pytest.raises(ConfigError) as info:
        EtcdOptions.from_env({"ETCDCTL_ENDPOINTS": addr})
    errors.append(str(info.value))
    if importlib.util.find_spec("consul") is not None:
        from meshkit.discovery import ConsulOptions

        with pytest.raises(ConfigError) as info:
            ConsulOptions.from_env({"CONSUL_HTTP_ADDR": addr})
        errors.append(str(info.value))
    for text in errors:
        assert _PW not in text, text
        assert "user info" in text or "scheme must be" in text, text


def test_local_uri_options_are_applied(tmp_path: Path) -> None:
    registry = registry_from_uri(f"local://{tmp_path}/r.db?ttl_s=6&poll_interval_s=0.5")
    options = registry.options  # type: ignore[attr-defined]
    assert (options.ttl_s, options.poll_interval_s) == (6.0, 0.5)


# -- auth, retry, publish, admin port ------------------------------------------------------


def test_auth_options_with_nothing_to_check_is_an_error() -> None:
    """No verifier, no policy and no peer check: the docstring's "nothing to check"."""
    with pytest.raises(ConfigError, match="nothing to check"):
        AuthOptions(check_peers=False)


@pytest.mark.parametrize("pattern", ["OrderService", "a/b/c", "", "x y/M"])
def test_auth_exempt_methods_patterns_checked_at_construction(pattern: str) -> None:
    """Checked with MethodMatcher now, as every other pattern field, not at serve()."""
    _refused_quoting(lambda: AuthOptions(exempt_methods=(pattern,)), pattern)


@pytest.mark.parametrize("key", ["Idempotency-Key", "", "idempotency-key-bin", ":path"])
def test_retry_idempotency_metadata_key_is_a_valid_metadata_key(key: str) -> None:
    """The same rule as ``JWTAuthOptions.metadata_key``: an upper-case key never matches
    a call's metadata, so no call would be safe to retry."""
    _refused_quoting(lambda: RetryPolicy(idempotency_metadata_key=key), key)


@pytest.mark.parametrize("stream", ["", "ORDERS.v1", "a b", "*"])
def test_publish_options_stream_is_a_nats_name(stream: str) -> None:
    """As ``ConsumerOptions.stream``; ``None`` stays "any stream"."""
    _refused_quoting(lambda: PublishOptions(stream=stream), stream)
    assert PublishOptions(stream=None).stream is None
    assert PublishOptions(stream="ORDERS").stream == "ORDERS"


@pytest.mark.parametrize(("algorithms", "quoted"), [
    pytest.param("ES256", "'ES256'", id="string"),
    pytest.param(frozenset({"HS256"}), "'HS256'", id="symmetric"),
    pytest.param(frozenset(), "empty", id="empty"),
])
def test_jwks_algorithms_are_checked(algorithms: object, quoted: str) -> None:
    """As ``VerifierOptions.algorithms``: asymmetric only, not empty, not one string."""
    with pytest.raises(ConfigError, match=quoted):
        JWKSClientOptions(algorithms=algorithms)  # type: ignore[arg-type]
    assert JWKSClientOptions(algorithms={"ES256"}).algorithms == frozenset({"ES256"})


@pytest.mark.parametrize("raw", ["abc", "80a", "9464.0", "-1", "70000", "+80"])
def test_bad_meshkit_admin_port_is_a_config_error_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """A bad MESHKIT_ADMIN_PORT is a ConfigError naming it, not a bare ValueError from
    every ``ServeOptions()``."""
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", raw)
    message = _refused_quoting(ServeOptions, raw)
    assert "MESHKIT_ADMIN_PORT" in message


@pytest.mark.parametrize(("raw", "port"), [("", 0), (" ", 0), ("9464", 9464), (" 80 ", 80)])
def test_meshkit_admin_port_is_read(monkeypatch: pytest.MonkeyPatch, raw: str,
                                    port: int) -> None:
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", raw)
    admin = ServeOptions().admin
    assert admin is not None and admin.port == port


@pytest.mark.parametrize("value", [1, b"user-id", "", "User-Id"])
def test_hash_key_metadata_is_a_lower_case_string(value: object) -> None:
    """``DialOptions.hash_key_metadata`` that is no string raised ``AttributeError``
    (``.lower()``) instead of a ``ConfigError`` quoting it; an empty key named nothing."""
    with pytest.raises(ConfigError, match="hash_key_metadata") as err:
        DialOptions(hash_key_metadata=value)  # type: ignore[arg-type]
    assert repr(value) in str(err.value)


@pytest.mark.parametrize("build", [
    lambda: DialOptions(insecure=True, method_timeouts=[("Echo/Sleep", 1.0)]),
    lambda: JWTAuthOptions(method_scopes=[("Echo/Unary", ("orders.read",))]),
], ids=["method_timeouts", "method_scopes"])
def test_method_tables_given_as_pairs_are_a_config_error(build: Callable[[], Any]) -> None:
    """A method table given as a list of pairs, not a mapping, is a ConfigError naming
    the field (it was an AttributeError), as for every other MethodMatcher table."""
    with pytest.raises(ConfigError, match="must be a mapping of method patterns"):
        build()



@pytest.mark.parametrize(("channel_options", "quoted"), [
    ({"grpc.max_receive_message_length": 8 << 20}, "mapping"),
    ([("grpc.max_receive_message_length",)], "('grpc.max_receive_message_length',)"),
    ([("grpc.max_receive_message_length", 1, 2)], "('grpc.max_receive_message_length', 1, 2)"),
    (["ab"], "'ab'"),  # grpc would take it as the option 'a' set to 'b'
    ([(1, 2)], "(1, 2)"),
    ([("", 1)], "('', 1)"),
    ([("grpc.max_receive_message_length", None)], "None"),  # an unset setting
    ([("grpc.max_receive_message_length", 8.0)], "8.0"),  # grpc takes it for a pointer
    ([("grpc.primary_user_agent", object)], "<class 'object'>"),
    ([(b"grpc.\xffx", 1)], "b'grpc.\\xffx'"),  # grpc's names are ASCII
], ids=["mapping", "one-element-pair", "three-element-item", "string-item", "int-key",
        "empty-key", "none-value", "float-value", "object-value", "non-ascii-bytes-key"])
def test_malformed_channel_options_are_refused_at_construction(
        channel_options: Any, quoted: str) -> None:
    """``DialOptions.channel_options`` is a sequence of ``(name, value)``; a bad option is
    a ConfigError at construction quoting it. A mapping (turned into the tuple of its
    keys), a pair without its value, a value grpc refuses (``None``: "Expected int,
    bytes, or behavior") or misreads (a float, taken for a C pointer) were all accepted:
    building the first endpoint's sub-channel raised inside the discovery watch, calls
    waited out their deadline and ``close()`` raised ``KeyError``."""
    with pytest.raises(ConfigError, match="channel_options") as err:
        DialOptions(insecure=True, channel_options=channel_options)
    assert quoted in str(err.value)


def test_well_formed_channel_options_are_kept_as_pairs() -> None:
    """What grpc takes is kept: str or bytes names (a bytes name decoded, so that it is
    the same argument as its str spelling, see
    ``test_bytes_named_grpc_options_are_the_arguments_of_their_str_names``); int (bool
    too), str and bytes values; a pair given as a list is stored as a tuple."""
    given: list[Any] = [["grpc.max_receive_message_length", 8 << 20],
                        ("grpc.primary_user_agent", "me/1"), (b"grpc.x", b"y"),
                        ("grpc.enable_retries", False)]
    built = DialOptions(insecure=True, channel_options=given).channel_options
    assert built == (("grpc.max_receive_message_length", 8 << 20),
                     ("grpc.primary_user_agent", "me/1"), ("grpc.x", b"y"),
                     ("grpc.enable_retries", False))


def test_bytes_named_grpc_options_are_the_arguments_of_their_str_names() -> None:
    """grpc takes an argument's name as ``str`` or ``bytes``; meshkit merges
    ``ServeOptions.server_options`` over the arguments ``ServerLimits`` sets by name, so
    a bytes name (``b"grpc.max_receive_message_length"``) sat beside meshkit's own str
    one and grpc core applied meshkit's: the override was silently ignored. Names are now
    decoded (ASCII) where the options are checked, server and channel alike; a name
    that is not ASCII is refused, quoted."""
    opts = ServeOptions(insecure=True, server_options=(
        (b"grpc.max_receive_message_length", 1000), (b"grpc.max_send_message_length", 2000)))
    assert opts.server_options == (("grpc.max_receive_message_length", 1000),
                                   ("grpc.max_send_message_length", 2000))
    assert DialOptions(insecure=True, channel_options=(
        (b"grpc.max_receive_message_length", 1000),)).channel_options == (
        ("grpc.max_receive_message_length", 1000),)
    with pytest.raises(ConfigError, match="server_options") as err:
        ServeOptions(insecure=True, server_options=((b"grpc.\xe9", 1),))
    assert "b'grpc.\\xe9'" in str(err.value)


@pytest.mark.parametrize("fields", [
    {"meta": {"version": 2}},
    {"meta": "version=v2"},  # was a bare ValueError out of dict() at start()
    {"meta": [("version", "v2")]},
    {"instance_id": ""},
    {"instance_id": "x" * 129},
    {"instance_id": 7},
], ids=["meta-int-value", "meta-string", "meta-pairs", "instance-id-empty",
        "instance-id-129", "instance-id-int"])
def test_an_instances_registration_fields_are_checked(
        fields: dict[str, Any]) -> None:
    """A registry ``Instance`` refuses a ``meta`` that is no mapping of strings (a string
    ``"version=v2"`` was an AttributeError) and an ``instance_id`` that is no string of
    1..128 characters (an int was a TypeError), naming the field; ``meta`` is kept as a
    copy."""
    from meshkit.discovery import Instance

    with pytest.raises(ConfigError, match=next(iter(fields))):
        Instance(**{"service": "a", "instance_id": "a-1", "host": "h", "port": 1, **fields})
    meta = {"version": "v2"}
    inst = Instance(service="a", instance_id="x" * 128, host="h", port=1, meta=meta)
    meta["version"] = "v3"
    assert inst.meta == {"version": "v2"}


@pytest.mark.parametrize("fields", [
    {"meta": {"version": 2}},
    {"meta": "version=v2"},  # was a bare ValueError out of dict() at start()
    {"instance_id": ""},
    {"instance_id": "x" * 129},
], ids=["meta-int-value", "meta-string", "instance-id-empty", "instance-id-129"])
def test_serve_options_check_registration_fields_when_built(fields: dict[str, Any]) -> None:
    """``ServeOptions.meta`` and ``instance_id`` were checked only when ``start()`` built
    the registry ``Instance``, after the server had bound its port (a string ``meta``
    failed there with a bare ValueError): they are ConfigErrors when the options are
    built, naming the field; ``meta`` is kept as a copy."""
    with pytest.raises(ConfigError, match=next(iter(fields))):
        ServeOptions(insecure=True, **fields)
    meta = {"version": "v2"}
    opts = ServeOptions(insecure=True, meta=meta, instance_id="x" * 128)
    meta["version"] = "v3"
    assert opts.meta == {"version": "v2"}


def test_serve_reads_meshkit_admin_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """``deploy/k8s`` sets ``MESHKIT_ADMIN_HOST=0.0.0.0`` so probes and a remote Prometheus
    reach the admin server, and the README says the admin server binds there; only the
    ecom example read it, so a service of the user's own built on ``serve()`` kept its
    admin server on loopback and failed its probes. ``ServeOptions``' default admin reads
    it (checked, named, quoted), beside ``MESHKIT_ADMIN_PORT``."""
    monkeypatch.setenv("MESHKIT_ADMIN_HOST", "0.0.0.0")
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", "9464")
    admin = ServeOptions(insecure=True).admin
    assert admin is not None and (admin.host, admin.port) == ("0.0.0.0", 9464)
    monkeypatch.setenv("MESHKIT_ADMIN_HOST", "")
    admin = ServeOptions(insecure=True).admin
    assert admin is not None and admin.host == "127.0.0.1"
    monkeypatch.setenv("MESHKIT_ADMIN_HOST", "no such host!")
    with pytest.raises(ConfigError, match=r"MESHKIT_ADMIN_HOST.*'no such host!'"):
        ServeOptions(insecure=True)


# -- options objects, flags and the options class itself ------------------------------------
def _serve(**kw: Any) -> ServeOptions:
    return ServeOptions(drain_delay_s=0.0, admin=None, **kw)


@pytest.mark.parametrize(("field", "build"), [
    ("outlier", lambda: DialOptions(insecure=True, outlier=True)),
    ("telemetry", lambda: DialOptions(insecure=True, telemetry=True)),
    ("retry", lambda: DialOptions(insecure=True, retry={"max_attempts": 5})),
    ("retry", lambda: DialOptions(insecure=True, retry={})),
    ("tls", lambda: DialOptions(tls="/etc/meshkit/certs")),
    ("credentials", lambda: DialOptions(credentials="token")),
    ("attempt_interceptors",
     lambda: DialOptions(insecure=True, attempt_interceptors=[object()])),
    ("attempt_interceptors",
     lambda: DialOptions(insecure=True, attempt_interceptors=_Stamp())),
    ("interceptors", lambda: DialOptions(insecure=True, interceptors=_Stamp())),
    ("filters", lambda: DialOptions(insecure=True, filters=5)),
    ("balancer", lambda: DialOptions(insecure=True, balancer="p2c")),
    ("deadline", lambda: _serve(insecure=True, deadline=True)),
    ("auth", lambda: _serve(insecure=True, auth=True)),
    ("rate_limit", lambda: _serve(insecure=True, rate_limit={"rate": "10/second"})),
    ("telemetry", lambda: _serve(insecure=True, telemetry=True)),
    ("admin", lambda: ServeOptions(insecure=True, admin=True)),
    ("tls", lambda: _serve(tls="/etc/meshkit/certs")),
    ("credentials", lambda: _serve(credentials="cert.pem")),
    ("interceptors", lambda: _serve(insecure=True, interceptors=[object()])),
    ("interceptors", lambda: _serve(insecure=True, interceptors=_Audit())),
], ids=["dial-outlier", "dial-telemetry", "dial-retry-dict", "dial-retry-empty-dict",
        "dial-tls-path", "dial-credentials-str", "dial-attempt-interceptor-object",
        "dial-attempt-interceptors-one", "dial-interceptors-one", "dial-filters-int",
        "dial-balancer-str", "serve-deadline", "serve-auth", "serve-rate-limit-dict",
        "serve-telemetry", "serve-admin", "serve-tls-path", "serve-credentials-str",
        "serve-interceptor-object", "serve-interceptors-one"])
def test_options_objects_of_the_wrong_type_are_refused_when_built(
        field: str, build: Callable[[], Any]) -> None:
    """``DialOptions``/``ServeOptions`` took any object for their options fields, so the
    mistake surfaced later: ``outlier=True`` as ``AttributeError: 'bool' object has no
    attribute 'failure_codes'`` at ``dial()``, ``rate_limit={...}`` as ``'dict' object
    has no attribute 'rules'``, ``admin=True`` only inside ``start()`` after the port was
    bound, ``credentials="..."`` or ``attempt_interceptors=[object()]`` with ``dial()``
    working and every call failing ``UNAVAILABLE`` "sub-channel could not be built",
    ServeOptions' ``interceptors=[object()]`` as grpc's ``ValueError`` reading
    ``{invalid_interceptors}``; ``retry={}`` silently meant the default retries. Each is
    a ConfigError when the options are built, naming the field and quoting the value; a
    sequence field given as one object (an interceptor, not a tuple of them) too."""
    with pytest.raises(ConfigError, match=rf"^{field}\b"):
        build()


def test_a_flag_for_an_options_object_says_how_to_ask_for_it() -> None:
    """``outlier=True`` ("on") is refused with how to say it: the class called for its
    defaults, ``None`` for none."""
    with pytest.raises(ConfigError) as err:
        DialOptions(insecure=True, outlier=True)  # type: ignore[arg-type]
    assert str(err.value) == ("outlier must be an OutlierOptions or None, got True (give "
                              "OutlierOptions() for the defaults, None for none)")


class _Stamp(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        return await continuation(details, request)


class _Audit(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


def test_subclasses_and_grpcs_own_kinds_are_taken() -> None:
    """What the checks refuse is no instance of the field's class: a subclass of an
    options class, grpc's credentials and grpc.aio interceptors of any kind are kept."""
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class MyOutlier(OutlierOptions):
        pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class MyTelemetry(TelemetryOptions):
        pass

    class Both(grpc.aio.StreamStreamClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_stream_stream(self, *a: Any) -> Any: ...
        async def intercept_unary_stream(self, *a: Any) -> Any: ...

    dial = DialOptions(outlier=MyOutlier(), telemetry=MyTelemetry(), retry=None,
                       credentials=grpc.local_channel_credentials(),
                       attempt_interceptors=[_Stamp(), Both()], propagate_deadline=False)
    assert isinstance(dial.outlier, MyOutlier) and len(dial.attempt_interceptors) == 2
    serve = _serve(credentials=grpc.local_server_credentials(), interceptors=[_Audit()],
                   deadline=DeadlineOptions(), rate_limit=None, reflection=False,
                   telemetry=MyTelemetry())
    assert serve.interceptors[0].__class__ is _Audit


@pytest.mark.parametrize(("field", "build"), [
    ("insecure", lambda: DialOptions(insecure="false")),
    ("insecure", lambda: DialOptions(insecure=1)),
    ("propagate_deadline", lambda: DialOptions(insecure=True, propagate_deadline="no")),
    ("insecure", lambda: _serve(insecure="false")),
    ("reflection", lambda: _serve(insecure=True, reflection="false")),
    ("expose_exception_text", lambda: _serve(insecure=True, expose_exception_text="0")),
], ids=["dial-insecure-str", "dial-insecure-int", "dial-propagate-deadline",
        "serve-insecure-str", "serve-reflection", "serve-expose-exception-text"])
def test_flags_must_be_true_or_false(field: str, build: Callable[[], Any]) -> None:
    """Flags were read by truthiness: ``insecure="false"`` (from the environment, e.g.
    ``os.environ.get("INSECURE", "false")``) turned plaintext ON, client and server,
    where the user meant the secure default (which refuses to run without
    certificates). A flag that is not ``True`` or ``False`` is a ConfigError naming it and
    quoting the value, as ``expose_exception_text`` already was."""
    with pytest.raises(ConfigError, match=rf"^{field} must be True or False, got "):
        build()


async def test_dial_and_serve_refuse_the_other_options_class() -> None:
    """``dial(options=ServeOptions(...))`` (the two share ``insecure``, ``tls``,
    ``telemetry``, ``interceptors``) died with a bare ``AttributeError: 'ServeOptions'
    object has no attribute 'filters'``; ``MeshServer(options=DialOptions(...))`` with
    ``... no attribute 'deadline'``. Both are a ConfigError naming ``options``, the class
    wanted and the class given (not its repr, which may carry credentials)."""
    import meshkit
    from meshkit.discovery import LocalRegistry
    from tests.support.echo import add_echo

    reg = LocalRegistry()
    try:
        with pytest.raises(ConfigError, match=r"options must be a DialOptions, got a "
                                              r"ServeOptions \(ServeOptions are MeshServer's\)"):
            meshkit.dial("echo", registry=reg,
                         options=ServeOptions(insecure=True))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="options must be a ServeOptions, got a "
                                              "DialOptions"):
            meshkit.MeshServer("echo", [add_echo("e1")], registry=reg,
                               options=DialOptions(insecure=True))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="options must be a DialOptions, got a dict"):
            meshkit.dial("echo", registry=reg, options={"insecure": True})  # type: ignore[arg-type]
    finally:
        await reg.close()


def _consul_options(**kw: Any) -> Any:
    from meshkit.discovery import ConsulOptions

    return ConsulOptions(**kw)


@pytest.mark.parametrize("build", [
    pytest.param(lambda v: TelemetryOptions(tracing=v), id="TelemetryOptions.tracing"),
    pytest.param(lambda v: TelemetryOptions(metrics=v), id="TelemetryOptions.metrics"),
    pytest.param(lambda v: TelemetryOptions(access_log=v), id="TelemetryOptions.access_log"),
    pytest.param(lambda v: TelemetryOptions(attempt_spans=v),
                 id="TelemetryOptions.attempt_spans"),
    pytest.param(lambda v: __import__("meshkit.observability", fromlist=["AdminOptions"])
                 .AdminOptions(require_server=v), id="AdminOptions.require_server"),
    pytest.param(lambda v: ServerLimits(bdp_probe=v), id="ServerLimits.bdp_probe"),
    pytest.param(lambda v: ServerLimits(read_requests=v), id="ServerLimits.read_requests"),
    pytest.param(lambda v: __import__("meshkit.auth", fromlist=["Rule"])
                 .Rule(allow_anonymous=v), id="Rule.allow_anonymous"),
    pytest.param(lambda v: AuthOptions(check_peers=v, policy=__import__(
        "meshkit.auth", fromlist=["AuthzPolicy"]).AuthzPolicy()), id="AuthOptions.check_peers"),
    pytest.param(lambda v: __import__("meshkit.resilience", fromlist=["RetryPolicy"])
                 .RetryPolicy(idempotent=v), id="RetryPolicy.idempotent"),
    pytest.param(lambda v: _consul_options(verify=v), id="ConsulOptions.verify"),
    pytest.param(lambda v: _consul_options(grpc_use_tls=v), id="ConsulOptions.grpc_use_tls"),
])
def test_a_flag_given_as_a_string_is_refused(build: Callable[[object], object]) -> None:
    """A flag read from the environment or a config file as a string (``"false"``,
    ``"0"``) is truthy: ``Rule(allow_anonymous="false")`` let anonymous callers in,
    ``RetryPolicy(idempotent="false")`` replayed calls not safe to repeat,
    ``TelemetryOptions(tracing="false")`` traced. As ``insecure`` (b79a4fe), every flag
    of the options classes is now ``True`` or ``False`` or a ConfigError quoting it."""
    _refused_quoting(lambda: build("false"), "false")
    build(True)
    build(False)


# -- grpc integer arguments beyond C int; natural "none" values; mappings kept by reference;
# -- huge ints of seconds (tests/test_hunt_options.py)

_C_INT_MAX = 2**31 - 1


@pytest.mark.parametrize(("field", "build"), [
    ("max_receive_message_bytes", lambda: ServerLimits(max_receive_message_bytes=2**31)),
    ("max_concurrent_streams", lambda: ServerLimits(max_concurrent_streams=2**32)),
    ("server_options", lambda: ServeOptions(
        server_options=[("grpc.max_receive_message_length", 2**40)])),
    ("server_options", lambda: ServeOptions(
        server_options=[("grpc.max_receive_message_length", -(2**31) - 1)])),
    ("channel_options", lambda: DialOptions(
        channel_options=[("grpc.max_receive_message_length", 2**40)])),
    ("channel_options", lambda: DialOptions(
        channel_options=[(b"grpc.max_receive_message_length", 10**5000)])),
], ids=["limits-receive", "limits-streams", "server-options", "server-options-negative",
        "channel-options", "channel-options-huge"])
def test_grpc_int_arguments_beyond_c_int_are_refused(field: str, build: Build) -> None:
    """A user lifted the message cap with ``ServerLimits(max_receive_message_bytes=2**31)``
    (2 GiB), or gave ``max_concurrent_streams=2**32``, or
    ``ServeOptions(server_options=[("grpc.max_receive_message_length", 2**40)])`` /
    ``DialOptions(channel_options=[...])``: all were accepted, then ``MeshServer.start()``
    raised a bare ``OverflowError: value too large to convert to int`` and the dialed
    channel failed every call ``UNAVAILABLE`` "sub-channel could not be built
    (OverflowError)": grpc channel arguments are C ``int``. Now a ConfigError naming the
    field at construction (an int too long to print is described, not quoted)."""
    with pytest.raises(ConfigError, match=field) as info:
        build()
    assert "2147483647" in str(info.value)


def test_grpc_int_arguments_up_to_c_int_and_pointers_still_pass() -> None:
    """The C int bounds themselves are accepted, and so is an object grpc takes for a C
    pointer (one with ``__int__``, not an ``int``), whatever its address."""

    class Pointer:
        def __int__(self) -> int:
            return 2**47 + 8

    limits = ServerLimits(max_receive_message_bytes=_C_INT_MAX,
                          max_concurrent_streams=_C_INT_MAX)
    assert ("grpc.max_receive_message_length", _C_INT_MAX) in limits.channel_args()
    pointer = Pointer()
    serve = ServeOptions(server_options=[("grpc.a", _C_INT_MAX), ("grpc.b", -(2**31)),
                                         ("grpc.c", pointer)])
    assert serve.server_options[2] == ("grpc.c", pointer)
    DialOptions(channel_options=[("grpc.max_receive_message_length", _C_INT_MAX)])


def test_serve_options_generic_methods_none_is_a_config_error() -> None:
    """``ServeOptions(generic_methods=None)`` ("none") raised a bare ``TypeError:
    'NoneType' object is not iterable`` naming no field; now a ConfigError naming
    ``generic_methods`` (as ``tags``), and an item that is not a string too."""
    _refused_quoting(lambda: _serve(generic_methods=None), None)
    with pytest.raises(ConfigError, match="generic_methods"):
        _serve(generic_methods=[b"/pkg.Svc/Get"])
    assert _serve(generic_methods=["pkg.Svc/*"]).generic_methods == ("pkg.Svc/*",)


def test_option_mappings_are_copied_not_shared_with_the_caller() -> None:
    """A user built ``DialOptions(method_timeouts=m, retry=RetryOptions(methods=rm))`` and
    then changed ``m`` and ``rm`` (one dict reused for several services): the frozen options
    kept the caller's dicts and changed with them, past validation (``"2"`` for a
    timeout, a plain dict for a policy), and ``dial()`` then raised a bare
    ``AttributeError: 'dict' object has no attribute 'max_attempts'``. Now the options
    keep a read-only copy: changing the caller's dict changes nothing, and the copy cannot
    be changed either."""
    from meshkit.resilience import RetryOptions

    m: dict[str, Any] = {"/meshkit.test.Echo/Unary": 2.0}
    rm: dict[str, Any] = {"/meshkit.test.Echo/Unary": RetryPolicy()}
    opts = DialOptions(insecure=True, telemetry=None, method_timeouts=m,
                       retry=RetryOptions(methods=rm))
    m["/meshkit.test.Echo/Unary"] = "2"
    rm["/meshkit.test.Echo/Unary"] = {"max_attempts": 5}
    assert opts.method_timeouts == {"/meshkit.test.Echo/Unary": 2.0}
    assert opts.retry is not None
    assert isinstance(opts.retry.methods["/meshkit.test.Echo/Unary"], RetryPolicy)
    with pytest.raises(TypeError):
        opts.method_timeouts["x"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        opts.retry.methods["x"] = None  # type: ignore[index]


@pytest.mark.parametrize("build", [
    pytest.param(lambda v: DialOptions(timeout_s=v), id="DialOptions.timeout_s"),
    pytest.param(lambda v: ServeOptions(grace_s=v), id="ServeOptions.grace_s"),
    pytest.param(lambda v: OutlierOptions(base_ejection_s=v),
                 id="OutlierOptions.base_ejection_s"),
    pytest.param(lambda v: check_number("grace_s", v, low=None), id="check_number"),
])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400",
                                                                      "1e5000"])
def test_seconds_given_as_an_int_past_float_range_are_a_config_error(
        build: Callable[[object], object], value: int) -> None:
    """``DialOptions(timeout_s=10**400)`` (a computed "forever") raised a bare
    ``OverflowError: int too large to convert to float`` from ``check_number``, for every
    seconds field of every options class. Now a ConfigError naming the field: the int
    quoted, or, past what Python prints (4300 digits), described by its size."""
    with pytest.raises(ConfigError, match=r"too large") as info:
        build(value)
    message = str(info.value)
    assert len(message) < 600, message
    assert ("timeout_s" in message or "grace_s" in message
            or "base_ejection_s" in message), message


def _tls_options(tmp_path: Path, **kw: Any) -> Any:
    from meshkit.auth import TLSOptions, init_ca_dir, issue_into_dir

    init_ca_dir(tmp_path / "pki", trust_domain="mesh.test")
    files = issue_into_dir(tmp_path / "pki", "svc")
    return TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file,
                      key_file=files.key_file, **kw)


@pytest.mark.parametrize("value", ["5", True, 0, -1.0, math.nan, None])
def test_tls_reload_interval_is_a_number_of_seconds(tmp_path: Path, value: object) -> None:
    """``TLSOptions(reload_interval_s="5")`` (from the environment) raised a bare
    ``TypeError: '>' not supported``, and ``reload_interval_s=True`` was accepted as 1 s:
    the value was compared by hand. Now ``check_number``: a ConfigError naming the field
    and quoting the value; a number > 0 (``math.inf``: never re-read) is accepted."""
    _refused_quoting(lambda: _tls_options(tmp_path, reload_interval_s=value), value)


def test_tls_reload_interval_accepts_positive_seconds(tmp_path: Path) -> None:
    """The counterpart: 0.05 s, 5 (an int) and ``math.inf`` are taken as given."""
    assert _tls_options(tmp_path, reload_interval_s=5).reload_interval_s == 5
    tls = _tls_options(tmp_path / "b", reload_interval_s=math.inf)
    assert tls.reload_interval_s == math.inf


@pytest.mark.parametrize("value", [None, 7, b"/x", ""])
def test_tls_files_must_be_paths(tmp_path: Path, value: object) -> None:
    """``TLSOptions(ca_file=os.environ.get("CA"))`` with the variable unset raised a bare
    ``TypeError: expected str, bytes or os.PathLike object, not NoneType`` (``7`` was
    read as file descriptor 7's path); now a ConfigError naming the field."""
    from meshkit.auth import TLSOptions

    with pytest.raises(ConfigError, match="ca_file"):
        TLSOptions(ca_file=value, cert_file=tmp_path / "c.pem",  # type: ignore[arg-type]
                   key_file=tmp_path / "c.key")


@pytest.mark.parametrize("key", [" ", "\n", "a\x00b", "X-Key", "", "a:b", 7, b"key"])
def test_hash_key_metadata_is_a_metadata_key(key: object) -> None:
    """``DialOptions(hash_key_metadata=" ")`` (also ``"\\n"``, ``"a\\x00b"``) was accepted:
    no call can carry such a key, so every call had no request key and affinity was lost
    silently. Now the gRPC metadata key check (``check_metadata_key``); a ``-bin`` key
    stays accepted (its bytes value is the request key)."""
    with pytest.raises(ConfigError, match="hash_key_metadata"):
        DialOptions(hash_key_metadata=key)  # type: ignore[arg-type]
    assert DialOptions(hash_key_metadata="user-id").hash_key_metadata == "user-id"
    assert DialOptions(hash_key_metadata="session-bin").hash_key_metadata == "session-bin"


@pytest.mark.parametrize("value", [7, b"idempotency_key", "", "idempotency-key"])
def test_retry_idempotency_field_is_an_attribute_name(value: object) -> None:
    """``RetryPolicy(idempotency_field=7)`` or ``b"..."`` was accepted and failed every
    retry decision with a bare ``TypeError`` from ``getattr``; ``""`` and a name that no
    attribute can have (``"idempotency-key"``, the metadata key's spelling) were
    accepted and silently never matched. Now a ConfigError naming the field; ``None``
    still turns the request check off."""
    _refused_quoting(lambda: RetryPolicy(idempotency_field=value), value)  # type: ignore[arg-type]
    assert RetryPolicy(idempotency_field=None).idempotency_field is None
    assert RetryPolicy(idempotency_field="request_id").idempotency_field == "request_id"


def _option_mappings() -> list[Any]:
    from meshkit.auth import AuthzPolicy, Rule
    from meshkit.resilience import RetryOptions

    cart = "/shop.v1.Cart/*"
    return [
        pytest.param(DialOptions, id="DialOptions()"),
        pytest.param(lambda: DialOptions(method_timeouts={cart: 2.0}),
                     id="DialOptions(method_timeouts)"),
        pytest.param(RetryOptions, id="RetryOptions()"),
        pytest.param(lambda: RetryOptions(methods={"/shop.v1.Cart/Get": RetryPolicy()}),
                     id="RetryOptions(methods)"),
        pytest.param(JWTAuthOptions, id="JWTAuthOptions()"),
        pytest.param(lambda: JWTAuthOptions(method_scopes={cart: ("cart:read",)}),
                     id="JWTAuthOptions(method_scopes)"),
        pytest.param(lambda: RateLimitOptions(rules={cart: "10/minute"}),
                     id="RateLimitOptions(rules)"),
        pytest.param(lambda: AuthzPolicy(rules={cart: Rule(allow_peers=("*",))}),
                     id="AuthzPolicy(rules)"),
    ]


@pytest.mark.parametrize("make", _option_mappings())
def test_options_with_mappings_pickle_copy_and_asdict(make: Build) -> None:
    """A user built ``DialOptions()`` once and handed it to worker processes
    (``ProcessPoolExecutor``, ``multiprocessing`` with spawn: both pickle their
    arguments), or ``copy.deepcopy``/``dataclasses.asdict`` it (config frameworks, test
    fixtures). Since the read-only copies of ``DialOptions.method_timeouts``,
    ``RetryOptions.methods`` and ``JWTAuthOptions.method_scopes`` (and before them
    ``RateLimitOptions.rules``, ``AuthzPolicy.rules``) were ``types.MappingProxyType``,
    even the default ``DialOptions()`` raised ``TypeError: cannot pickle 'mappingproxy'
    object``. Now these fields are a :class:`meshkit._fields.FrozenMap`: still read-only
    copies (``test_option_mappings_are_copied_not_shared_with_the_caller``), and the
    options pickle, copy, deep-copy, ``asdict`` and ``replace`` to equal options."""
    import copy
    import dataclasses
    import pickle

    options = make()
    assert pickle.loads(pickle.dumps(options)) == options
    assert copy.deepcopy(options) == options
    assert copy.copy(options) == options
    assert dataclasses.replace(options) == options
    assert isinstance(dataclasses.asdict(options), dict)  # type: ignore[call-overload]


def test_frozen_map_is_a_read_only_mapping() -> None:
    """What the option mappings are now (:class:`meshkit._fields.FrozenMap`): equal to a
    dict with the same items (either way round), shown as a dict is, hashable when its
    values are, a copy of what it was given, and with no way to change it."""
    import copy
    import pickle

    from meshkit._fields import FrozenMap

    given: dict[str, Any] = {"a": 1, "b": (2, 3)}
    fm = FrozenMap(given)
    given["a"] = 9
    as_dict: dict[str, Any] = {"a": 1, "b": (2, 3)}
    assert fm == as_dict and as_dict == fm  # FrozenMap.__eq__, then reflected
    assert fm != {"a": 1} and fm != [("a", 1), ("b", (2, 3))]
    assert repr(fm) == "{'a': 1, 'b': (2, 3)}"
    assert fm["a"] == 1 and fm.get("c") is None and list(fm) == ["a", "b"] and len(fm) == 2
    assert hash(fm) == hash(FrozenMap({"b": (2, 3), "a": 1}))
    with pytest.raises(TypeError, match="unhashable"):
        hash(FrozenMap({"a": []}))
    with pytest.raises(TypeError):
        fm["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        del fm["a"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        fm.update({"a": 2})  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        fm.x = 1  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(fm)) == fm
    deep = copy.deepcopy(FrozenMap({"l": [1]}))
    assert deep == {"l": [1]} and type(deep) is FrozenMap


def test_option_mappings_still_merge_and_copy_as_read_only_mappings_do() -> None:
    """``FrozenMap`` (c5ed426, for pickling) had taken away what the read-only mappings
    before it offered: ``opts.rules | {...}`` and ``{...} | opts.rules`` (PEP 584),
    ``.copy()`` and ``reversed()`` raised ``TypeError``/``AttributeError``, so
    ``dataclasses.replace(opts, rules=opts.rules | {...})`` broke. They give dicts again."""
    from meshkit.resilience import RateLimitOptions

    opts = RateLimitOptions(rules={"/a.A/*": "10/second"})
    assert opts.rules | {"/b.B/*": "5/second"} == {"/a.A/*": "10/second",
                                                  "/b.B/*": "5/second"}
    assert {"/z.Z/*": "1/second"} | opts.rules == {"/z.Z/*": "1/second",
                                                  "/a.A/*": "10/second"}
    assert type(opts.rules.copy()) is dict and opts.rules.copy() == {"/a.A/*": "10/second"}
    assert list(reversed(opts.rules)) == ["/a.A/*"]
    dial = DialOptions(method_timeouts={"/a.A/*": 1.0})
    assert dial.method_timeouts | {"/b.B/*": 2.0} == {"/a.A/*": 1.0, "/b.B/*": 2.0}
    assert dataclasses.replace(opts, rules=opts.rules | {"/b.B/*": None}).rules == {
        "/a.A/*": "10/second", "/b.B/*": None}


def _workload(root: Path, trust_domain: str) -> dict[str, Path]:
    """A mesh CA of ``trust_domain`` under ``root`` and an ``orderd`` certificate it
    issued: the three files ``TLSOptions`` takes."""
    from meshkit.auth import init_ca_dir, issue_into_dir

    init_ca_dir(root, trust_domain=trust_domain, ttl_days=1)
    files = issue_into_dir(root, "orderd", ttl_h=1)
    return {"ca_file": files.ca_file, "cert_file": files.cert_file,
            "key_file": files.key_file}


def test_replace_reads_the_trust_domain_again_from_the_new_ca(tmp_path: Path) -> None:
    """``TLSOptions.trust_domain`` left out is read from the CA certificate, and was
    stored in the field: ``dataclasses.replace(tls, ca_file=..., cert_file=...,
    key_file=...)`` moving to another mesh's files kept the old trust domain and failed
    with a CertificateError that the certificate "is for trust domain 'b.test'" (a
    trust domain the user never wrote). Now a trust domain read from the CA is read
    again from the new one; one given is kept (and still checked). It reads, compares,
    prints and pickles as the string it is."""
    import copy
    import pickle

    from meshkit.auth import CertificateError, TLSOptions

    a, b = _workload(tmp_path / "a", "a.test"), _workload(tmp_path / "b", "b.test")
    tls = TLSOptions(**a)
    assert tls.trust_domain == tls.domain == "a.test" and isinstance(tls.trust_domain, str)
    moved = dataclasses.replace(tls, **b)
    assert (moved.trust_domain, moved.spiffe_id) == ("b.test", "spiffe://b.test/svc/orderd")
    assert moved == TLSOptions(**b) and repr(moved) == repr(TLSOptions(**b))
    assert dataclasses.replace(tls, reload_interval_s=1.0).trust_domain == "a.test"
    given = TLSOptions(**a, trust_domain="a.test")
    assert given == tls and repr(given) == repr(tls)
    with pytest.raises(CertificateError, match="trust domain"):
        dataclasses.replace(given, **b)  # the user's trust domain: kept, and refused
    assert dataclasses.replace(TLSOptions(**b, trust_domain="b.test"),
                               reload_interval_s=1.0).trust_domain == "b.test"
    # TLSOptions pickles as its given fields and copies share what it read
    # (tests/auth/test_tls_options_pickle.py); its read-from-the-CA trust domain copies too
    for domain in (pickle.loads(pickle.dumps(tls.trust_domain)), copy.copy(tls).trust_domain,
                   copy.deepcopy(tls.trust_domain)):
        assert domain == "a.test" and type(domain) is type(tls.trust_domain)
    assert dataclasses.replace(copy.copy(tls), **b).trust_domain == "b.test"
