"""Every built-in answer of the admin server is never cached and never content-sniffed."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from meshkit.observability import AdminOptions, AdminServer


async def test_built_in_answers_and_errors_are_no_store_and_nosniff() -> None:
    """/readyz, /healthz, /livez, /metrics, /debug/mesh, the dashboard and its JSON, and
    the 400/403/404/405 answers (which quote the request) carry ``Cache-Control: no-store``
    (a probe or a debug view must not be answered from a cache) and
    ``X-Content-Type-Options: nosniff``; an added route's own Cache-Control is kept."""

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": []}, headers={"Cache-Control": "max-age=300"})

    admin = AdminServer(AdminOptions(registry=CollectorRegistry()))
    admin.add_route("/.well-known/jwks.json", jwks)
    await admin.start()
    seen: dict[tuple[str, str], tuple[int, str | None, str | None]] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in (("GET", "/readyz"), ("HEAD", "/readyz"), ("GET", "/healthz"),
                                 ("GET", "/livez"), ("GET", "/metrics"),
                                 ("GET", "/debug/mesh"), ("GET", "/debug/dashboard.json"),
                                 ("GET", "/"), ("GET", "/readyz?service=a&service=b"),
                                 ("GET", "/readyz?service=absent"), ("GET", "/nothing"),
                                 ("POST", "/metrics"), ("OPTIONS", "/readyz")):
                async with http.request(method, admin.url + path) as resp:
                    await resp.read()
                    seen[method, path] = (resp.status, resp.headers.get("Cache-Control"),
                                          resp.headers.get("X-Content-Type-Options"))
            async with http.get(admin.url + "/debug/mesh",
                                headers={"Host": "attacker.example"}) as resp:
                seen["GET", "/debug/mesh (rebound Host)"] = (
                    resp.status, resp.headers.get("Cache-Control"),
                    resp.headers.get("X-Content-Type-Options"))
            async with http.get(admin.url + "/.well-known/jwks.json") as resp:
                assert resp.headers["Cache-Control"] == "max-age=300"
    finally:
        await admin.stop()
    wrong = {k: v for k, v in seen.items() if v[1:] != ("no-store", "nosniff")}
    assert not wrong, wrong
    assert {v[0] for v in seen.values()} >= {200, 400, 403, 404, 405, 503}
