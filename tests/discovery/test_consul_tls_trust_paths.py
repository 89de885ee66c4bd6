"""The pinned CA (``ca_file``, ``ca_path``) on every request path of the Consul registry,
not only ``register()``: the watch, ``snapshot()``, the keeper's heartbeats, and the
client the registry makes for another thread's event loop each refuse an agent whose
certificate only a system-trusted CA signed."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import threading
from pathlib import Path

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.discovery.test_consul import _write_pki
from tests.support.wait import until

FAST = {"ttl_s": 0.6, "wait_s": 0.5, "request_timeout_s": 2.0, "backoff_base_s": 0.05,
        "backoff_max_s": 0.1}


@pytest.mark.parametrize("pin", ["ca_file", "ca_path"])
async def test_every_path_trusts_the_pinned_ca_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin: str) -> None:
    """With ``ca_file`` or ``ca_path`` pinned, an agent signed by a CA of the system's
    trust store (``SSL_CERT_FILE``) fails the watch (unreadable, a certificate error),
    ``snapshot()``, and ``register()`` from another thread's event loop."""
    for name in ("system", "pinned", "cas"):
        (tmp_path / name).mkdir()
    system, pinned = _write_pki(tmp_path / "system"), _write_pki(tmp_path / "pinned")
    shutil.copy(pinned["ca"], tmp_path / "cas" / "ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", system["ca"])  # the "system" trust store
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(system["server"], system["server_key"])
    trust = {"ca_file": pinned["ca"]} if pin == "ca_file" else {"ca_path": str(tmp_path / "cas")}
    async with ConsulDouble(ssl_context=server_ctx) as double:
        service = unique_service()
        options = ConsulOptions(addr=f"https://{double.addr}", **trust, **FAST)  # type: ignore[arg-type]
        async with ConsulRegistry(options) as registry:
            watch = registry.watch(service)
            reader = asyncio.ensure_future(anext(watch))
            try:
                await until(lambda: registry.status().read_errors >= 1, timeout_s=5,
                            what="a failed watch read")
                assert "certificate" in (registry.status().last_error or "").lower()
                assert not reader.done()
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await watch.aclose()
            with pytest.raises(RegistryError, match=r"(?i)certificate"):
                await registry.snapshot(service)

            errors: list[BaseException] = []

            def other_loop() -> None:
                async def main() -> None:
                    await registry.register(make_instance(service, 2))
                try:
                    asyncio.run(main())
                except BaseException as exc:  # handed to the test
                    errors.append(exc)

            thread = threading.Thread(target=other_loop)
            thread.start()
            await asyncio.to_thread(thread.join, 10)
            assert not thread.is_alive()
            assert len(errors) == 1 and isinstance(errors[0], RegistryError), errors
            assert "certificate" in str(errors[0]).lower()
        assert not double.services
