"""Review of f31548bb (ETCDCTL_USER/ETCDCTL_PASSWORD read as etcdctl reads them): with
``ETCDCTL_PASSWORD`` set, ``ETCDCTL_USER`` is the user name whole, ``:`` and all, as
etcdctl takes it. A deployment that sets both, ``ETCDCTL_USER=root:<password>`` and
``ETCDCTL_PASSWORD=<password>`` (or an older password left in ETCDCTL_USER), got
``user='root:<password>'``: the password in ``repr(EtcdOptions)`` and in the registry's
log line naming the user. A user name holding ``:`` is shown up to it (the rest
``[REDACTED]``), and what follows it is redacted from errors as the password is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary

pytestmark = pytest.mark.timeout(60)

_SECRET = "Old-S3cret-do-not-print"
_EP = {"ETCDCTL_ENDPOINTS": "h:2379"}


@pytest.mark.parametrize("make", [
    lambda: EtcdOptions.from_env({**_EP, "ETCDCTL_USER": f"root:{_SECRET}",
                                  "ETCDCTL_PASSWORD": "other-pw"}),
    lambda: EtcdOptions.from_uri("etcd://h:2379", environ={
        "ETCDCTL_USER": f"root:{_SECRET}", "ETCDCTL_PASSWORD": "other-pw"}),
    lambda: EtcdOptions(user=f"root:{_SECRET}", password="other-pw"),
], ids=["from-env", "from-uri", "in-code"])
def test_a_user_holding_a_colon_is_not_shown_past_it(make: object) -> None:
    options = make()  # type: ignore[operator]
    assert options.user == f"root:{_SECRET}"  # taken whole, as etcdctl takes it
    shown = repr(options)
    assert _SECRET not in shown, shown
    assert "user='root:[REDACTED]'" in shown, shown
    assert _SECRET not in repr(EtcdRegistry(options)), repr(EtcdRegistry(options))


def test_a_plain_user_is_still_shown() -> None:
    options = EtcdOptions(user="app", password="pw")
    assert "user='app'" in repr(options)
    assert "pw'" not in repr(options)


def test_errors_redact_what_follows_the_colon() -> None:
    registry = EtcdRegistry(EtcdOptions(user=f"root:{_SECRET}", password="other-pw"))
    # an error page echoing /auth/authenticate's body quotes the name
    shown = registry._shown({"error": f'bad request {{"name": "root:{_SECRET}"}}'})
    assert _SECRET not in shown, shown


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        yield cluster
    finally:
        cluster.close()


async def test_the_auth_off_log_line_does_not_carry_it(node: EtcdCluster) -> None:
    """etcd's authentication off: the registry logs that requests go without a token,
    naming the user; never what follows its ':'."""
    env = {"ETCDCTL_ENDPOINTS": ",".join(node.endpoints), "ETCDCTL_USER": f"root:{_SECRET}",
           "ETCDCTL_PASSWORD": "other-pw"}
    with structlog.testing.capture_logs() as logs:
        options = EtcdOptions.from_env(env, ttl_s=3, request_timeout_s=2.0,
                                       operation_timeout_s=4.0)
        async with EtcdRegistry(options) as registry:
            await registry.register(make_instance(unique_service(), 1))
    assert any("authentication is not enabled" in str(e.get("event")) for e in logs), logs
    assert _SECRET not in repr(logs), logs
