"""The registries' options (Consul, etcd, local): a value of the wrong type, as a config file
or the environment gives it (``None`` for "unset", ``bytes`` read from a file, a number
for a string), is a :class:`~meshkit.errors.ConfigError` naming the field at
construction, never a bare ``TypeError``/``AttributeError`` from deep inside, and never
quoting a token."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.discovery import ConsulOptions, EtcdOptions, LocalOptions
from meshkit.errors import ConfigError

Build = Callable[[], object]

_SECRET = "s3cr3t-token-value"


def _refused(build: Build, field: str) -> str:
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert field in message, message
    assert "s3cr3t" not in message, message
    return message


@pytest.mark.parametrize(("field", "build"), [
    ("addr", lambda: ConsulOptions(addr=None)),  # type: ignore[arg-type]
    ("addr", lambda: ConsulOptions(addr=8500)),  # type: ignore[arg-type]
    ("token", lambda: ConsulOptions(token=_SECRET.encode())),  # type: ignore[arg-type]
    ("token", lambda: ConsulOptions(token=[_SECRET])),  # type: ignore[arg-type]
    ("ca_file", lambda: ConsulOptions(ca_file=3)),  # type: ignore[arg-type]
    ("ttl_s", lambda: ConsulOptions(ttl_s=None)),  # type: ignore[arg-type]
    ("endpoints", lambda: EtcdOptions(endpoints=None)),  # type: ignore[arg-type]
    ("endpoints", lambda: EtcdOptions(endpoints=[2379])),  # type: ignore[list-item]
    ("prefix", lambda: EtcdOptions(prefix=None)),  # type: ignore[arg-type]
    ("prefix", lambda: EtcdOptions(prefix=b"/meshkit/")),  # type: ignore[arg-type]
    ("ttl_s", lambda: EtcdOptions(ttl_s=None)),  # type: ignore[arg-type]
    ("ttl_s", lambda: EtcdOptions(ttl_s="10")),  # type: ignore[arg-type]
    ("ttl_s", lambda: EtcdOptions(ttl_s=10**400)),
    ("ca_file", lambda: EtcdOptions(ca_file=3)),  # type: ignore[arg-type]
    ("path", lambda: LocalOptions(path=None)),  # type: ignore[arg-type]
    ("path", lambda: LocalOptions(path=b"/tmp/mesh")),  # type: ignore[arg-type]
    ("path", lambda: LocalOptions(path="")),
], ids=["consul-addr-none", "consul-addr-int", "consul-token-bytes", "consul-token-list",
        "consul-ca-file-fd", "consul-ttl-none", "etcd-endpoints-none", "etcd-endpoint-int",
        "etcd-prefix-none", "etcd-prefix-bytes", "etcd-ttl-none", "etcd-ttl-str",
        "etcd-ttl-huge", "etcd-ca-file-fd", "local-path-none", "local-path-bytes",
        "local-path-empty"])
def test_a_wrong_type_is_a_config_error_naming_the_field(field: str, build: Build) -> None:
    """Natural spellings of "unset" failed with a bare Python error naming no field:
    ``ConsulOptions(addr=os.environ.get("CONSUL_HTTP_ADDR"))`` with the variable unset
    -> ``AttributeError: 'NoneType' object has no attribute 'strip'``;
    ``ConsulOptions(token=Path(f).read_bytes())`` -> ``TypeError: a bytes-like object is
    required``; ``LocalOptions(path=None)`` -> ``TypeError: expected str, bytes or
    os.PathLike object``; ``EtcdOptions(endpoints=None)`` -> ``TypeError: 'NoneType'
    object is not iterable``; ``endpoints=[2379]`` / ``prefix=None`` ->
    ``AttributeError``; ``ttl_s=None`` -> ``TypeError: float() argument``. A file
    descriptor number given as ``ca_file`` passed ``os.path.isfile``. Now a ConfigError
    naming the field (never quoting the token)."""
    _refused(build, field)


def test_the_right_types_still_pass(tmp_path: Path) -> None:
    """The counterparts: paths as ``str`` or ``os.PathLike``, endpoints as any sequence
    of strings, a token as a string, ``grpc_health_service=""`` (the whole server)."""
    assert LocalOptions(path=str(tmp_path / "a")).path == tmp_path / "a" / "registry.db"
    assert LocalOptions(path=tmp_path / "b.db").path == tmp_path / "b.db"
    assert EtcdOptions(endpoints=["127.0.0.1:2379"]).endpoints == ("http://127.0.0.1:2379",)
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    assert EtcdOptions(endpoints=["https://h:2379"], ca_file=os.fspath(ca)).ca_file == str(ca)
    assert ConsulOptions(token=_SECRET, ca_file=str(ca)).token == _SECRET
    assert ConsulOptions(grpc_health_service="").grpc_health_service == ""


@pytest.mark.parametrize("value", [7, b"orders", ["orders"]])
def test_consul_grpc_health_service_is_a_string(value: object) -> None:
    """``ConsulOptions(grpc_health_service=7)`` (or ``b"orders"``) was accepted and sent
    to the agent as ``host:port/7`` (``host:port/b'orders'``): the check asked about a
    service nobody serves, and the instance went critical and was reaped. Now a
    ConfigError naming the field; ``None`` (the instance's service) and ``""`` (the whole
    server) as documented."""
    message = _refused(lambda: ConsulOptions(grpc_health_service=value),  # type: ignore[arg-type]
                       "grpc_health_service")
    assert repr(value) in message


@pytest.mark.parametrize("make", [
    pytest.param(lambda: EtcdOptions(endpoints=[b"http://root:s3cret@127.0.0.1:2379"]),
                 id="EtcdOptions(endpoints=[bytes])"),
    pytest.param(lambda: EtcdOptions(endpoints="http://root:s3cret@127.0.0.1:2379"),
                 id="EtcdOptions(endpoints=str)"),
    pytest.param(lambda: ConsulOptions(addr=b"http://user:s3cret@127.0.0.1:8500"),
                 id="ConsulOptions(addr=bytes)"),
])
def test_an_address_of_the_wrong_type_is_refused_without_its_password(
        make: Callable[[], object]) -> None:
    """An etcd endpoint list or Consul address read as bytes (``os.environb``, a file
    opened ``"rb"``), or one endpoint URL given for the list, carrying user info: the type
    checks quoted it whole (``ConfigError: endpoints must hold strings, got
    b'http://root:s3cret@...'``) into logs and CI output, where the same address as a
    well-formed string is refused with its user info hidden. Now the message gives the
    type, or the URL without user info."""
    with pytest.raises(ConfigError) as info:
        make()
    assert "s3cret" not in str(info.value), str(info.value)


# -- defaults worked out from ttl_s ----------------------------------------------------------
def _etcd_derived(o: EtcdOptions) -> tuple[object, ...]:
    return (o.keepalive_interval_s, o.fault_grace_s, o.last_seen_ttl_s)


def test_replace_works_the_ttl_defaults_out_again_from_the_new_ttl() -> None:
    """``dataclasses.replace(EtcdOptions(ttl_s=5), ttl_s=60)`` kept the keep-alive interval
    worked out from the old TTL (5 / 3 s: twelve times the requests asked for) and its
    ``fault_grace_s`` of 5 s, and ``replace(EtcdOptions(ttl_s=30), ttl_s=2)`` failed with
    "keepalive_interval_s must be < ttl_s=2, got 10.0", a value the user never wrote:
    ``__post_init__`` stored ``ttl_s / 3`` into the field, and ``replace()`` passes every
    field back as if given. ``ConsulOptions.fault_grace_s`` the same. Now a default worked
    out from ``ttl_s`` is worked out again: the options replaced equal those built with
    the new TTL."""
    longer = dataclasses.replace(EtcdOptions(ttl_s=5), ttl_s=60)
    assert _etcd_derived(longer) == (20, 60, 600)
    assert longer == EtcdOptions(ttl_s=60)
    shorter = dataclasses.replace(EtcdOptions(ttl_s=30), ttl_s=2)
    assert _etcd_derived(shorter) == (2 / 3, 2, 300)
    other = dataclasses.replace(EtcdOptions(ttl_s=5), prefix="/p/")  # another field
    assert _etcd_derived(other) == (5 / 3, 5, 300)
    uri = dataclasses.replace(EtcdOptions.from_uri("etcd://h:2379?ttl_s=3", environ={}),
                              ttl_s=30)
    assert _etcd_derived(uri) == (10, 30, 300)
    consul = dataclasses.replace(ConsulOptions(ttl_s=15), ttl_s=60)
    assert consul.fault_grace_s == 60 and consul == ConsulOptions(ttl_s=60)
    from_uri = ConsulOptions.from_uri("consul://h:8500?ttl_s=6", environ={})
    assert dataclasses.replace(from_uri, ttl_s=3).fault_grace_s == 3


def test_values_the_user_gave_are_kept_and_checked_by_replace() -> None:
    """A value given (also one equal to the default) is the user's: ``replace()`` keeps
    it, and refuses it when the new fields make it wrong, naming it."""
    given = EtcdOptions(ttl_s=10, keepalive_interval_s=1, fault_grace_s=0, last_seen_ttl_s=0)
    assert _etcd_derived(dataclasses.replace(given, ttl_s=60)) == (1, 0, 0)
    same = EtcdOptions(ttl_s=6, keepalive_interval_s=2.0, fault_grace_s=6, last_seen_ttl_s=300)
    assert _etcd_derived(dataclasses.replace(same, ttl_s=60)) == (2, 6, 300)
    with pytest.raises(ConfigError, match=r"keepalive_interval_s must be < ttl_s=2, got 5"):
        dataclasses.replace(EtcdOptions(ttl_s=30, keepalive_interval_s=5), ttl_s=2)
    with pytest.raises(ConfigError, match="last_seen_ttl_s"):
        dataclasses.replace(EtcdOptions(ttl_s=10, last_seen_ttl_s=60), ttl_s=120)
    assert dataclasses.replace(ConsulOptions(ttl_s=15, fault_grace_s=4),
                               ttl_s=60).fault_grace_s == 4


def test_defaults_worked_out_read_compare_and_pickle_as_numbers() -> None:
    """The fields still read as the value in effect (a float: what code and tests read,
    ``repr`` shows and JSON writes), options equal (and hash as) those given the same
    values, and the default survives pickling, copying and ``asdict``: replaced after
    them, it is worked out again."""
    derived = EtcdOptions(ttl_s=6)
    given = EtcdOptions(ttl_s=6, keepalive_interval_s=2.0, fault_grace_s=6.0,
                        last_seen_ttl_s=300.0)
    assert _etcd_derived(derived) == (2.0, 6.0, 300.0)
    assert all(isinstance(v, float) for v in _etcd_derived(derived))
    assert derived == given and hash(derived) == hash(given)
    assert repr(derived) == repr(given)
    assert "keepalive_interval_s=2.0, " in repr(derived)
    assert json.dumps(dataclasses.asdict(derived)) == json.dumps(dataclasses.asdict(given))
    assert type(derived.keepalive_interval_s * 3) is float  # arithmetic: plain floats
    copies = [pickle.loads(pickle.dumps(derived, protocol))
              for protocol in range(pickle.HIGHEST_PROTOCOL + 1)]
    copies += [copy.copy(derived), copy.deepcopy(derived),
               EtcdOptions(**dataclasses.asdict(derived))]
    for o in copies:
        assert o == derived
        assert _etcd_derived(dataclasses.replace(o, ttl_s=60)) == (20, 60, 600)
    consul = pickle.loads(pickle.dumps(ConsulOptions(ttl_s=9)))
    assert consul.fault_grace_s == 9 and repr(consul) == repr(ConsulOptions(ttl_s=9,
                                                                              fault_grace_s=9.0))
    assert dataclasses.replace(consul, ttl_s=30).fault_grace_s == 30


def _local_derived(o: LocalOptions) -> tuple[object, ...]:
    return (o.heartbeat_interval_s, o.fault_grace_s)


def test_local_options_replace_works_the_ttl_defaults_out_again(tmp_path: Path) -> None:
    """``dataclasses.replace(LocalOptions(path=p, ttl_s=3), ttl_s=30)`` kept the heartbeat
    interval of the old TTL (1 s: ten times the writes asked for) and its
    ``fault_grace_s`` of 3 s, and ``replace(LocalOptions(path=p, ttl_s=30), ttl_s=2)``
    failed with "heartbeat_interval_s must be in (0, ttl_s=2), got 10.0", a value never
    written: ``__post_init__`` stored ``ttl_s / 3`` and ``ttl_s`` into the fields, which
    ``replace()`` passes back as if given (EtcdOptions' fault, b1d9aee). Now both are
    worked out again from the new TTL; values given are kept and checked."""
    p = tmp_path / "reg"
    longer = dataclasses.replace(LocalOptions(path=p, ttl_s=3), ttl_s=30)
    assert _local_derived(longer) == (10, 30)
    assert longer == LocalOptions(path=p, ttl_s=30)
    shorter = dataclasses.replace(LocalOptions(path=p, ttl_s=30), ttl_s=2)
    assert _local_derived(shorter) == (2 / 3, 2)
    other = dataclasses.replace(LocalOptions(path=p, ttl_s=6), poll_interval_s=1)
    assert _local_derived(other) == (2, 6)
    given = LocalOptions(path=p, ttl_s=30, heartbeat_interval_s=5, fault_grace_s=0)
    assert _local_derived(dataclasses.replace(given, ttl_s=60)) == (5, 0)
    same = LocalOptions(path=p, ttl_s=6, heartbeat_interval_s=2.0, fault_grace_s=6.0)
    assert _local_derived(dataclasses.replace(same, ttl_s=60)) == (2, 6)
    with pytest.raises(ConfigError,
                       match=r"heartbeat_interval_s must be in \(0, ttl_s=2\), got 5"):
        dataclasses.replace(LocalOptions(path=p, ttl_s=30, heartbeat_interval_s=5), ttl_s=2)
    with pytest.raises(ConfigError, match="ttl_s must be"):
        dataclasses.replace(LocalOptions(path=p), ttl_s=0)  # named, not a derived field


def test_local_options_defaults_read_compare_and_pickle_as_numbers(tmp_path: Path) -> None:
    """The defaults worked out read as floats, the options equal (and print as) those
    given the same values, and survive pickling and copying: replaced after them, they
    are worked out again."""
    p = tmp_path / "reg"
    derived = LocalOptions(path=p, ttl_s=6)
    given = LocalOptions(path=p, ttl_s=6, heartbeat_interval_s=2.0, fault_grace_s=6.0)
    assert _local_derived(derived) == (2.0, 6.0)
    assert all(isinstance(v, float) for v in _local_derived(derived))
    assert derived == given and hash(derived) == hash(given)
    assert repr(derived) == repr(given)
    copies = [pickle.loads(pickle.dumps(derived)), copy.copy(derived), copy.deepcopy(derived)]
    for o in copies:
        assert o == derived
        assert _local_derived(dataclasses.replace(o, ttl_s=60)) == (20, 60)
