"""README "The ecom example": its code block, run as written (the user id placeholder
filled in) against a real ``serve()`` over mTLS from ``MESHKIT_CERT_DIR`` /
``MESHKIT_WORKLOAD``, as its comments say: the server serves and registers ``userd``,
the client's balanced channel finds it and GetUser answers. Pins the block's imports,
``UserServicer(store)``, ``serve()``'s and ``dial()``'s secure-by-default path."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from examples.ecom.demo import make_certificates
from examples.ecom.storage import open_store

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


def _ecom_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### The ecom example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README: no python block under 'The ecom example'"
    return match.group(1)


async def test_readme_ecom_block_serves_and_calls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cert_dir = make_certificates(tmp_path / "certs")  # userd's and the edge client's
    for name in ("MESHKIT_REGISTRY", "MESHKIT_ADMIN_PORT", "MESHKIT_ADMIN_HOST",
                 "MESHKIT_TRACE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MESHKIT_CERT_DIR", str(cert_dir))
    monkeypatch.setenv("MESHKIT_WORKLOAD", "edge")
    monkeypatch.setenv("MESHKIT_LOCAL_DIR", str(tmp_path / "registry"))
    store = await open_store(f"sqlite:///{tmp_path / 'users.db'}")
    try:
        user = await store.create_user("snippet@example.com", "Snippet", "unused-hash")
        block = _ecom_block()
        assert 'user_id="..."' in block
        ns: dict[str, Any] = {}
        exec(compile(block.replace('user_id="..."', f'user_id="{user.id}"'),
                     "README.md (The ecom example)", "exec"), ns)
        server = asyncio.create_task(ns["server"](store))
        try:
            from meshkit.discovery import registry_from_env

            registry = registry_from_env()
            try:
                async with asyncio.timeout(20):
                    while not await registry.instances("userd"):
                        assert not server.done(), server
                        await asyncio.sleep(0.05)
            finally:
                await registry.close()
            capsys.readouterr()
            async with asyncio.timeout(20):
                await ns["client"]()
            out = capsys.readouterr().out
            assert "snippet@example.com" in out and user.id in out, out
        finally:
            server.cancel()  # serve() drains on a cancel, then the cancel propagates
            await asyncio.gather(server, return_exceptions=True)
    finally:
        await store.close()
