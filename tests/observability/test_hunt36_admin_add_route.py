"""``AdminServer.add_route`` refuses a method that is not an HTTP method and a route added
twice at once, with ``ConfigError``: both were accepted and made ``start()`` (so
``serve()``) fail later with aiohttp's ValueError or RuntimeError."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.observability import AdminOptions, AdminServer


async def _handler(request: web.Request) -> web.Response:
    return web.Response(text="x")


def _admin() -> AdminServer:
    return AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))


@pytest.mark.parametrize("method", ["G T", "", "GET\r\n", "GÉT", None, 7])
def test_a_method_that_is_not_an_http_token_is_refused(method: Any) -> None:
    with pytest.raises(ConfigError, match="method"):
        _admin().add_route("/x", _handler, method=method)


@pytest.mark.parametrize(("first", "second"), [
    ("GET", "GET"), ("POST", "post"), ("GET", "HEAD"), ("HEAD", "GET"), ("*", "PUT"),
    ("DELETE", "*"),
])
def test_a_route_added_twice_is_refused(first: str, second: str) -> None:
    """The same path and method (``GET`` answers ``HEAD`` too; ``*`` is every method)."""
    admin = _admin()
    admin.add_route("/x", _handler, method=first)
    with pytest.raises(ConfigError, match="/x"):
        admin.add_route("/x", _handler, method=second)


async def test_routes_that_do_not_clash_start_and_answer() -> None:
    admin = _admin()
    admin.add_route("/x", _handler)
    admin.add_route("/x", _handler, method="post")
    admin.add_route("/y", _handler, method="*")
    admin.add_route("/z", _handler, method="M-SEARCH")
    await admin.start()
    await admin.stop()
