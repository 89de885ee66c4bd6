"""MethodMatcher: the one method-pattern dialect (spellings, precedence, validation, cache).

The per-feature tests (retry, timeouts, quiet methods, rate limits, JWT, authz) that use
real in-process servers live next to each feature and in the second half of this file.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._methods import MAX_CACHED_METHODS, MethodMatcher
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError
from meshkit.observability import TelemetryOptions
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.echo import method as echo_method
from tests.support.wait import until

PLACE = "/ecom.v1.OrderService/PlaceOrder"
GET_ORDER = "/ecom.v1.OrderService/GetOrder"
GET_USER = "/ecom.v1.UserService/GetUser"


# -- spellings --------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", [
    "/ecom.v1.OrderService/PlaceOrder",  # full
    "ecom.v1.OrderService/PlaceOrder",  # full without the leading slash
    "OrderService/PlaceOrder",  # short
    "OrderService/*", "/ecom.v1.OrderService/*", "ecom.v1.OrderService/*",
    "*/Place*", "ecom.*/*", "*Service/Place?rder", "Order[SX]ervice/*", "*", "*/*", "/*/*",
])
def test_every_spelling_matches(pattern: str) -> None:
    """Full, slash-less, short and glob spellings all name /ecom.v1.OrderService/PlaceOrder."""
    m = MethodMatcher({pattern: 1}, 0)
    assert m.lookup(PLACE) == 1
    assert m.match(PLACE) == (pattern, 1)


@pytest.mark.parametrize("pattern", [
    "/ecom.v1.UserService/PlaceOrder", "UserService/PlaceOrder", "OrderService/Place",
    "v1.OrderService/PlaceOrder",  # neither the full service name nor the package-less one
    "orderservice/placeorder",  # case-sensitive
    "*/Get*", "other.*/*", "OrderService/Place?",
])
def test_non_matching_spellings_fall_to_default(pattern: str) -> None:
    """A pattern naming another service/method, or only part of a name, does not match."""
    m = MethodMatcher({pattern: 1}, 0)
    assert m.match(PLACE) == (None, 0)


def test_package_less_method_names() -> None:
    """A service without a package (``/Svc/M``) matches its one spelling and globs."""
    m = MethodMatcher({"Svc/M": 1, "Svc/*": 2}, 0)
    assert m.lookup("/Svc/M") == 1
    assert m.lookup("/Svc/N") == 2


def test_wildcard_never_crosses_the_slash() -> None:
    """``*`` in the service part cannot swallow the method part and vice versa."""
    m = MethodMatcher({"ecom*/X": 1}, 0)
    assert m.lookup("/ecom.v1.OrderService/X") == 1
    assert m.lookup("/ecom.v1.OrderService/Y") == 0


# -- precedence -------------------------------------------------------------------------------
def test_exact_beats_any_glob() -> None:
    """An exact pattern wins over every glob, however long."""
    m = MethodMatcher({"/ecom.v1.OrderService/Place*": "glob", "OrderService/PlaceOrder": "exact"},
                      "default")
    assert m.match(PLACE) == ("OrderService/PlaceOrder", "exact")


def test_full_exact_beats_short_exact() -> None:
    """Of two exact spellings matching one method, the package-qualified one wins."""
    m = MethodMatcher({"OrderService/PlaceOrder": "short", PLACE: "full"}, "default")
    assert m.match(PLACE) == (PLACE, "full")
    assert m.match("/other.OrderService/PlaceOrder") == ("OrderService/PlaceOrder", "short")


def test_longest_glob_wins_by_literal_characters() -> None:
    """'Longest' counts literal characters: OrderService/* (13) beats */Get* (4)."""
    m = MethodMatcher({"*/Get*": "get", "OrderService/*": "orders", "*": "all"}, "default")
    assert m.match(GET_ORDER) == ("OrderService/*", "orders")
    assert m.match(GET_USER) == ("*/Get*", "get")
    assert m.match("/x.Y/Z") == ("*", "all")


def test_wildcards_do_not_count_towards_length() -> None:
    """A pattern padded with wildcards is not 'longer': ``*****/*`` loses to ``O*/*``."""
    m = MethodMatcher({"*****/*": "stars", "O*/*": "o"}, "default")
    assert m.lookup(PLACE) == "o"
    sets = MethodMatcher({"[OPQRSTUVWXYZ]rderService/*": "set", "OrderService/P*": "literal"}, 0)
    assert sets.lookup(PLACE) == "literal"  # a [...] set counts 0, so 12 + 1 + 0 < 14 + 1


def test_mixed_spellings_full_service_glob_is_longer() -> None:
    """The documented caveat: /ecom.v1.OrderService/* (21) beats OrderService/Get* (16)."""
    m = MethodMatcher({"OrderService/Get*": "short", "/ecom.v1.OrderService/*": "full"}, 0)
    assert m.lookup(GET_ORDER) == "full"


def test_tie_fewer_stars_then_code_point_order() -> None:
    """Equal literal counts: fewer ``*`` wins, then the spelling that sorts first."""
    stars = MethodMatcher({"OrderService/*": "star", "OrderService/??????????": "qs"}, 0)
    # equal literals (13): '?' patterns have no '*', so they win
    assert stars.lookup(PLACE) == "qs"
    tie = MethodMatcher({"*/Place*": "b", "*/*Order": "a"}, 0)  # both 6 literals, 2 stars
    assert tie.match(PLACE) == ("*/*Order", "a")  # '*/*Order' < '*/Place*' by code point


def test_mapping_order_never_matters() -> None:
    """The same patterns in any order give the same answers."""
    entries = {"*/Place*": 1, "*/*Order": 2, "OrderService/*": 3, "*": 4, "*/Get*": 5}
    forward = MethodMatcher(entries, 0)
    backward = MethodMatcher(dict(reversed(entries.items())), 0)
    for method in (PLACE, GET_ORDER, GET_USER, "/a.B/PlaceX", "/a.B/C"):
        assert forward.match(method) == backward.match(method)
    assert forward.patterns == backward.patterns


def test_default_when_nothing_matches() -> None:
    """No pattern: the default, reported as pattern None."""
    m: MethodMatcher[float | None] = MethodMatcher({"OrderService/*": 2.0}, None)
    assert m.match(GET_USER) == (None, None)
    assert MethodMatcher({}, 7).lookup(GET_USER) == 7


def test_of_builds_a_set_matcher() -> None:
    """MethodMatcher.of(patterns) answers True for members, False otherwise."""
    m = MethodMatcher.of(("grpc.health.v1.Health/*", "UserService/GetUser"))
    assert m.lookup("/grpc.health.v1.Health/Check") is True
    assert m.lookup(GET_USER) is True
    assert m.lookup(PLACE) is False


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    "", " ", "OrderService", "/ecom.v1.OrderService", "/s.*", "/*", "//M", "Svc/", "/Svc/",
    "a/b/c", "/a/b/c", " OrderService/*", "OrderService/* ", "Order Service/M", "Svc/M\n",
])
def test_bad_patterns_refused_quoted(bad: str) -> None:
    """Empty, whitespace, no '/', an empty part or an extra '/' fail, quoting the pattern."""
    with pytest.raises(ConfigError) as info:
        MethodMatcher({bad: 1}, 0, where="RetryOptions.methods")
    assert repr(bad) in str(info.value)
    assert "RetryOptions.methods" in str(info.value)


def test_non_string_pattern_refused() -> None:
    """A key that is not a string is quoted in the error."""
    with pytest.raises(ConfigError, match="42"):
        MethodMatcher({42: 1}, 0)  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="string 'Svc/M'"):
        MethodMatcher.of("Svc/M")


@pytest.mark.parametrize(("a", "b"), [("/a.B/C", "a.B/C"), ("*", "*/*"), ("/*/*", "*")])
def test_two_spellings_of_one_pattern_refused(a: str, b: str) -> None:
    """Two spellings of one pattern would make the answer depend on mapping order."""
    with pytest.raises(ConfigError) as info:
        MethodMatcher({a: 1, b: 2}, 0)
    assert repr(a) in str(info.value) and repr(b) in str(info.value)


# -- cache ------------------------------------------------------------------------------------
def test_resolution_is_cached_per_method() -> None:
    """The second lookup of a method is a dict hit returning the same object."""
    value = object()
    m = MethodMatcher({"OrderService/*": value}, None)
    assert m.lookup(PLACE) is value
    assert PLACE in m._cache
    assert m.match(PLACE) is m._cache[PLACE]


def test_cache_is_bounded_oldest_first() -> None:
    """Past MAX_CACHED_METHODS names the oldest is evicted; answers stay right."""
    m = MethodMatcher({"Svc/*": 1}, 0)
    for i in range(MAX_CACHED_METHODS + 10):
        assert m.lookup(f"/p.Svc/M{i}") == 1
    assert len(m._cache) == MAX_CACHED_METHODS
    assert "/p.Svc/M0" not in m._cache
    assert f"/p.Svc/M{MAX_CACHED_METHODS + 9}" in m._cache
    assert m.lookup("/p.Svc/M0") == 1 and m.lookup("/q.Other/M0") == 0


# -- every user, on real in-process servers -----------------------------------------------------
# The echo service is /meshkit.test.Echo/<Method>; tests name it in every spelling.
ECHO_SPELLINGS = ("/meshkit.test.Echo/{m}", "meshkit.test.Echo/{m}", "Echo/{m}", "Echo/{m}*",
                  "*/{m}", "meshkit.*/{m}")


def _opts(**kw: Any) -> meshkit.DialOptions:
    kw.setdefault("outlier", None)
    kw.setdefault("telemetry", None)
    return meshkit.DialOptions(insecure=True, **kw)


async def _fail_attempts(registry: LocalRegistry, served: list[str],
                         methods: dict[str, RetryPolicy | None]) -> int:
    """How many attempts one UNAVAILABLE call of Fail makes under ``methods``."""
    served.clear()
    options = _opts(retry=RetryOptions(default=None, methods=methods))
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary(echo_method("Fail"))(b"UNAVAILABLE", timeout=5)
    return len(served)


RETRY = RetryPolicy(idempotent=True, max_attempts=3,
                    backoff=Backoff(base_delay_s=0.001, max_delay_s=0.002))


@pytest.mark.parametrize("spelling", ECHO_SPELLINGS)
async def test_retry_methods_every_spelling(registry: LocalRegistry, echo_servers: EchoFactory,
                                            spelling: str) -> None:
    """RetryOptions.methods: each spelling of Fail gets the policy; another method's doesn't."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    assert await _fail_attempts(registry, served, {spelling.format(m="Fail"): RETRY}) == 3
    assert await _fail_attempts(registry, served, {spelling.format(m="Unary"): RETRY}) == 1


async def test_retry_methods_precedence(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """Exact beats a glob; the longest glob beats a shorter one, whatever the order."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    full_glob, short_glob = "/meshkit.test.Echo/*", "*/Fail"  # 18 vs 5 literal characters
    assert await _fail_attempts(registry, served, {short_glob: None, full_glob: RETRY}) == 3
    assert await _fail_attempts(registry, served, {full_glob: None, short_glob: RETRY}) == 1
    assert await _fail_attempts(registry, served, {"Echo/Fail": None, full_glob: RETRY}) == 1
    assert await _fail_attempts(registry, served, {"Echo/Fail": RETRY, "*": None}) == 3


async def _sleep_outcome(registry: LocalRegistry, timeouts: dict[str, float]) -> str:
    """Call Sleep(300 ms) without a timeout under ``method_timeouts``; 'ok' or the code
    (the 50 ms timeouts below run out 250 ms before it could answer)."""
    options = _opts(retry=None, method_timeouts=timeouts)
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        # discovery first: a 50 ms deadline must bound the call, not the channel's first
        # registry read (which, on a loaded box, made it UNAVAILABLE "no endpoint")
        await ch.wait_for_endpoints(1, timeout_s=10)
        try:
            await ch.unary_unary(echo_method("Sleep"))(b"300")
        except grpc.aio.AioRpcError as err:
            return err.code().name
    return "ok"


@pytest.mark.parametrize("spelling", ECHO_SPELLINGS)
async def test_method_timeouts_every_spelling(registry: LocalRegistry,
                                              echo_servers: EchoFactory, spelling: str) -> None:
    """method_timeouts: each spelling of Sleep sets its deadline; another method's doesn't."""
    await echo_servers("e1")
    assert await _sleep_outcome(registry, {spelling.format(m="Sleep"): 0.05}) == \
        "DEADLINE_EXCEEDED"
    assert await _sleep_outcome(registry, {spelling.format(m="Unary"): 0.05}) == "ok"


async def test_method_timeouts_precedence(registry: LocalRegistry,
                                          echo_servers: EchoFactory) -> None:
    """Exact beats a glob; the longest glob beats a shorter one."""
    await echo_servers("e1")
    tight, loose = 0.05, 30.0
    assert await _sleep_outcome(registry, {"*": tight, "*/Sleep": loose}) == "ok"
    assert await _sleep_outcome(registry, {"*/Sleep": loose, "/meshkit.test.Echo/*": tight}) \
        == "DEADLINE_EXCEEDED"
    assert await _sleep_outcome(registry, {"Echo/Sleep": loose, "/meshkit.test.Echo/*": tight}) \
        == "ok"
    with pytest.raises(ConfigError, match="'Sleep'"):
        meshkit.DialOptions(insecure=True, method_timeouts={"Sleep": 1.0})


@pytest.mark.parametrize("spelling", ECHO_SPELLINGS)
async def test_quiet_methods_every_spelling(registry: LocalRegistry, echo_servers: EchoFactory,
                                            spelling: str) -> None:
    """quiet_methods: each spelling silences Unary's spans on both sides, not ServerStream's."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    quiet = (spelling.format(m="Unary"),)
    telemetry = TelemetryOptions(tracer_provider=provider, registry=CollectorRegistry(),
                                 quiet_methods=quiet)
    await echo_servers("e1", telemetry=telemetry)
    async with meshkit.dial("echo", registry=registry,
                            options=_opts(telemetry=telemetry)) as ch:
        assert await ch.unary_unary(echo_method("Unary"))(b"x", timeout=5)
        assert [m async for m in ch.unary_stream(echo_method("ServerStream"))(b"1", timeout=5)]
    await until(lambda: len(exporter.get_finished_spans()) >= 2, timeout_s=5)
    names = [s.name for s in exporter.get_finished_spans()]
    provider.shutdown()
    assert not [n for n in names if n.endswith("Unary")], names
    assert len([n for n in names if n.endswith("ServerStream")]) >= 2, names
    with pytest.raises(ConfigError, match="'Unary'"):
        TelemetryOptions(quiet_methods=("Unary",))


# -- the ecom example: one spelling, every key a real method ------------------------------------
def test_ecom_example_spells_every_method_pattern_in_full() -> None:
    """mesh.py and security.py use /ecom.v1.<Service>/<Method>, each naming a method of the
    protos (or a whole service with /*), so a typo cannot silently match nothing."""
    from examples.ecom import mesh, security
    from examples.ecom.proto import order_pb2, user_pb2

    known = {f"/{s.full_name}/{m.name}" for f in (order_pb2, user_pb2)
             for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods}
    services = {m.rpartition("/")[0] for m in known}
    infra = ("/grpc.health.v1.", "/grpc.reflection.")
    patterns: list[str] = []
    for dial in (mesh.USERS, mesh.ORDERS):
        assert dial.retry is not None
        patterns += [*dial.retry.methods, *dial.method_timeouts]
    for jwt_opts in (security.USERD_JWT, security.ORDERD_JWT):
        patterns += [*jwt_opts.public_methods, *jwt_opts.method_scopes]
    for policy in (security.userd_policy(), security.orderd_policy()):
        patterns += list(policy.rules)
    patterns += list(security.RATE_LIMITS)
    assert len(patterns) > 15
    for p in patterns:
        if p.startswith(infra):
            continue
        assert p in known or (p.endswith("/*") and p[:-2] in services), p
