"""EtcdOptions.from_env / from_uri take etcd's user name and password from etcdctl's
variables as etcdctl does (etcdctl/ctlv3/command/global.go, ``authCfgFromCmd``):
``ETCDCTL_USER=name:password`` (split at the first ``:``), or ``ETCDCTL_USER=name`` with
``ETCDCTL_PASSWORD`` (then the user is taken whole, ``:`` and all). They were refused at
construction although ``EtcdOptions(user=, password=)`` exists. Explicit options (the
``user``/``password`` overrides, as a pair) win over the variables; the password is never
quoted in an error, a ``repr`` or a log. A real etcd with authentication on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from meshkit.discovery import EtcdOptions, EtcdRegistry
from meshkit.errors import ConfigError
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

_SECRET = "S3cret:Pw with space-do-not-print"
_EP = {"ETCDCTL_ENDPOINTS": "h:2379"}


@pytest.mark.parametrize(("env", "user", "password"), [
    ({"ETCDCTL_USER": f"root:{_SECRET}"}, "root", _SECRET),
    ({"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": _SECRET}, "root", _SECRET),
    # with ETCDCTL_PASSWORD the user is taken whole, as etcdctl takes it
    ({"ETCDCTL_USER": "ro:ot", "ETCDCTL_PASSWORD": _SECRET}, "ro:ot", _SECRET),
    ({"ETCDCTL_USER": "root:"}, "root", ""),
], ids=["user-colon-password", "user-and-password", "colon-user-and-password",
        "empty-password"])
def test_etcdctl_credentials_are_read(env: dict[str, str], user: str, password: str) -> None:
    options = EtcdOptions.from_env({**_EP, **env})
    assert (options.user, options.password) == (user, password)
    assert _SECRET not in repr(options)
    uri_options = EtcdOptions.from_uri("etcd://h:2379", environ=env)
    assert (uri_options.user, uri_options.password) == (user, password)


def test_explicit_options_win_as_a_pair() -> None:
    env = {**_EP, "ETCDCTL_USER": f"root:{_SECRET}"}
    options = EtcdOptions.from_env(env, user="app", password="pw2")
    assert (options.user, options.password) == ("app", "pw2")
    options = EtcdOptions.from_env({**_EP, "ETCDCTL_USER": "root",
                                    "ETCDCTL_PASSWORD": _SECRET}, user="app", password="pw2")
    assert (options.user, options.password) == ("app", "pw2")
    # no variables: nothing taken
    assert EtcdOptions.from_env(_EP).user is None


@pytest.mark.parametrize("env", [
    {"ETCDCTL_USER": "root"},  # etcdctl would prompt for the password: nobody to ask
    {"ETCDCTL_PASSWORD": _SECRET},  # etcdctl drops it silently: refused, not dropped
], ids=["user-without-password", "password-without-user"])
def test_an_incomplete_pair_fails_at_construction_unquoted(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        EtcdOptions.from_env({**_EP, **env})
    text = str(info.value)
    assert _SECRET not in text, text
    assert "ETCDCTL_USER" in text, text


def test_an_empty_user_name_is_refused_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        EtcdOptions.from_env({**_EP, "ETCDCTL_USER": f":{_SECRET}"})
    assert _SECRET not in str(info.value), str(info.value)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        cluster.add_root(_SECRET)
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.close()


async def test_a_registry_from_the_environment_authenticates(node: EtcdCluster) -> None:
    """``ETCDCTL_USER=root:<password>`` reaches an etcd with authentication on: register
    and watch work, and no log line carries the password."""
    env = {"ETCDCTL_ENDPOINTS": ",".join(node.endpoints), "ETCDCTL_USER": f"root:{_SECRET}"}
    service = unique_service()
    a = make_instance(service, 1)
    with structlog.testing.capture_logs() as logs:
        options = EtcdOptions.from_env(env, ttl_s=3, request_timeout_s=2.0,
                                       operation_timeout_s=4.0)
        async with EtcdRegistry(options) as registry:
            await registry.register(a)
            watcher = Collector(registry, service)
            await watcher.until_set({a}, timeout_s=15)
            await watcher.stop()
            assert registry.status().readable is True
    assert _SECRET not in repr(logs)
