"""EtcdRegistry's "readable" was registry-wide: under etcd's authentication a user allowed
to read one service's prefix but not another's had one refused watch (``permission
denied``) flip ``status().readable`` to False for every service of the registry, so the
channel of the service it could read took its registry for unreadable (its calls'
errors said so, a pool not resolved yet failed fast). ``status(service)`` now says how
that service's watches read, and ``status()`` is False only while every watched service
fails. A real etcd with authentication on."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import EtcdOptions, EtcdRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.support.etcd import EtcdCluster, require_etcd_binary
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ROOT_PW = "root-Pa55"
_APP_PW = "app-Pa55"
_PREFIX = "/meshkit/services/"
FAST: dict[str, Any] = {"ttl_s": 3, "request_timeout_s": 2.0, "operation_timeout_s": 4.0,
                        "backoff_base_s": 0.05, "backoff_max_s": 0.3}
_ALLOWED = unique_service()
_DENIED = unique_service()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """root (role root), and app: read and write on ``_ALLOWED``'s prefix only."""
    cluster = EtcdCluster(require_etcd_binary(), Path(tmp_path_factory.mktemp("etcd")))
    try:
        cluster.start_blocking()
        cluster.add_root(_ROOT_PW)
        cluster.call("/auth/role/add", {"name": "app"})
        start = f"{_PREFIX}{_ALLOWED}/"
        end = start[:-1] + "0"  # '/' + 1
        cluster.call("/auth/role/grant", {"name": "app", "perm": {
            "permType": "READWRITE", "key": _b64(start), "range_end": _b64(end)}})
        cluster.call("/auth/user/add", {"name": "app", "password": _APP_PW})
        cluster.call("/auth/user/grant", {"user": "app", "role": "app"})
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.close()


async def test_one_refused_watch_leaves_other_services_readable(node: EtcdCluster) -> None:
    a = make_instance(_ALLOWED, 1)
    root = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="root",
                                    password=_ROOT_PW, **FAST))
    app = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="app",
                                   password=_APP_PW, **FAST))
    try:
        await root.register(a)
        allowed = Collector(app, _ALLOWED)
        assert await allowed.next(timeout_s=15) == {a}
        denied = Collector(app, _DENIED)
        await until(lambda: app.status(_DENIED).readable is False, timeout_s=15,
                    what="the refused watch to be unreadable")
        # several failed retries of the refused watch later, the other still reads
        errors = app.status().read_errors
        await until(lambda: app.status().read_errors >= errors + 3, timeout_s=15,
                    what="the refused watch to retry")
        assert app.status(_ALLOWED).readable is True
        assert app.status().readable is not False, app.status()
        assert app.status(_DENIED).summary == "the service registry cannot be read"
        assert app.status(unique_service()).readable is None  # not watched
        # a write to the readable service still reaches its watch
        b = make_instance(_ALLOWED, 2)
        await root.register(b)
        await allowed.until_set({a, b}, timeout_s=15)
        assert app.status().readable is not False
        # the readable watch gone: only failing watches remain, the registry is unreadable
        await allowed.stop()
        await until(lambda: app.status().readable is False, timeout_s=15,
                    what="the registry to be unreadable with only the refused watch")
        await denied.stop()
        assert app.status(_DENIED).readable is None
    finally:
        await app.close()
        await root.close()


async def test_the_refused_service_reports_its_outage_start(node: EtcdCluster) -> None:
    """``status(service)`` of the refused service gives its outage's start
    (``failing_since_s``) and its error; the readable one none."""
    app = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="app",
                                   password=_APP_PW, **FAST))
    try:
        allowed = Collector(app, _ALLOWED)
        await allowed.next(timeout_s=15)
        denied = Collector(app, _DENIED)
        await until(lambda: app.status(_DENIED).readable is False, timeout_s=15,
                    what="the refused watch to be unreadable")
        refused = app.status(_DENIED)
        assert refused.failing_since_s is not None
        assert refused.last_error is not None and "permission denied" in refused.last_error
        assert _APP_PW not in refused.last_error
        assert app.status(_ALLOWED).failing_since_s is None
        await denied.stop()
        await allowed.stop()
    finally:
        await app.close()


async def test_a_refused_watch_logs_its_outage_once(node: EtcdCluster) -> None:
    """One warning naming the refused service over its retries, no "readable again"
    line each time another service's stream answers (the registry-wide outcome started
    and ended an outage at every turn: a warning per retry)."""
    from structlog.testing import capture_logs

    root = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="root",
                                    password=_ROOT_PW, **FAST))
    app = EtcdRegistry(EtcdOptions(endpoints=tuple(node.endpoints), user="app",
                                   password=_APP_PW, **FAST))
    try:
        allowed = Collector(app, _ALLOWED)
        await allowed.next(timeout_s=15)
        with capture_logs() as logs:
            denied = Collector(app, _DENIED)
            errors = app.status().read_errors
            n = 0
            while app.status().read_errors < errors + 4:  # events between the retries
                n += 1
                await root.register(make_instance(_ALLOWED, 100 + n))
                await asyncio.sleep(0.2)
                assert n < 100, "the refused watch did not retry"
        started = [e for e in logs if e["event"].startswith("etcd cannot be read")]
        back = [e for e in logs if e["event"] == "etcd readable again"]
        assert len(started) == 1 and started[0]["service"] == _DENIED, started
        assert not back, back
        await denied.stop()
        await allowed.stop()
    finally:
        await app.close()
        await root.close()
