"""A live server whose ``stats()`` raises (a custom registry whose ``status()`` throws):
``/readyz`` answers 503 for it, naming the failure by its exception type only (the
message may hold a secret), and logs the exception once as a warning; ``/debug/mesh``
and the dashboard's JSON still answer with the other servers. They answered 500."""

from __future__ import annotations

import json

import aiohttp
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.discovery._types import RegistryStatus
from meshkit.observability import AdminOptions, AdminServer
from tests.support.echo import add_echo
from tests.support.wait import until

SECRET = "token=s3cr3t-in-the-message"


class _StatusThrows(LocalRegistry):
    """A registry whose status() raises once ``failing`` is set."""

    failing = False

    def status(self) -> RegistryStatus:
        if self.failing:
            raise RuntimeError(f"status backend refused {SECRET}")
        return super().status()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


def _server(name: str, registry: LocalRegistry) -> meshkit.MeshServer:
    return meshkit.MeshServer(name, [add_echo(name)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                           grace_s=0.5))


async def test_a_server_whose_stats_raise_is_not_ready_and_hides_no_other(
        registry: LocalRegistry, prom: CollectorRegistry) -> None:
    """/readyz is 503 naming the failing server and the exception type (never its
    message), logged once; /readyz?service= of the other is 200; /debug/mesh and
    /debug/dashboard.json answer 200 with the other server."""
    bad_reg = _StatusThrows(registry.options)
    admin = AdminServer(AdminOptions(registry=prom))
    await admin.start()
    good, bad = _server("good-svc", registry), _server("bad-svc", bad_reg)
    try:
        await good.start()
        await bad.start()
        await until(lambda: good.ready and bad.ready, what="both registered")
        assert (await _get(admin.url + "/readyz"))[0] == 200
        bad_reg.failing = True
        with capture_logs() as logs:
            for _ in range(3):
                status, text = await _get(admin.url + "/readyz")
                assert status == 503, text
                body = json.loads(text)
                assert SECRET not in text and "s3cr3t" not in text
                assert "RuntimeError" in body["reason"], body
                [entry] = body["not_ready"]
                assert entry["service"] == "bad-svc"
                assert entry["error"] == "RuntimeError"
            status, text = await _get(admin.url + "/readyz?service=bad-svc")
            assert status == 503 and "RuntimeError" in json.loads(text)["reason"], text
            assert SECRET not in text
            assert (await _get(admin.url + "/readyz?service=good-svc"))[0] == 200
            status, text = await _get(
                admin.url + f"/readyz?service=bad-svc&instance={bad.instance.instance_id}")
            assert status == 503 and SECRET not in text, text
            for path in ("/debug/mesh", "/debug/dashboard.json"):
                status, text = await _get(admin.url + path)
                assert status == 200, (path, text)
                names = [s["service"] for s in json.loads(text)["servers"]]
                assert names == ["good-svc"], (path, names)
                assert SECRET not in text
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1, warnings
        assert "bad-svc" in json.dumps(warnings[0], default=str)
        bad_reg.failing = False
        assert (await _get(admin.url + "/readyz"))[0] == 200
    finally:
        bad_reg.failing = False
        await bad.drain()
        await good.drain()
        await bad_reg.close()
        await admin.stop()
