"""``meshkit services`` probes an instance's admin ``/readyz`` at its announced address.
For an IPv6 link-local one (``fe80::...%eth0``, zone and all) the probe went to the URL as
shown, its zone escaped ``%25eth0`` as RFC 6874 writes it in a URI, which aiohttp hands to
the resolver as written ("Name or service not known"): a live instance was listed
``unreachable``. The probe now dials the address with its zone as it is; the ADMIN column
still shows the RFC 6874 URL (``http://[fe80::1%25eth0]:9100``, what curl takes)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from meshkit._cli.services import collect
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(60)


def _link_local() -> str | None:
    """A link-local IPv6 address of this machine with its zone (``fe80::1%eth0``), or
    None (``/proc/net/if_inet6``: address, index, prefix, scope ``20`` = link, flags,
    interface)."""
    try:
        rows = Path("/proc/net/if_inet6").read_text().split()
    except OSError:
        return None
    for k in range(0, len(rows) - 5, 6):
        raw, scope, name = rows[k], rows[k + 3], rows[k + 5]
        if scope == "20":
            groups = [raw[i:i + 4] for i in range(0, 32, 4)]
            return f"{ipaddress.IPv6Address(':'.join(groups))}%{name}"
    return None


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, int]]:
    """An admin-like server answering ``/readyz`` 200 on a link-local address."""
    address = _link_local()
    if address is None:
        pytest.skip("this machine has no link-local IPv6 address")
    app = web.Application()

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, address, 0)
    try:
        await site.start()
    except OSError as exc:  # pragma: no cover - an address the kernel will not bind
        await runner.cleanup()
        pytest.skip(f"cannot listen on {address}: {exc}")
    try:
        yield address, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_a_link_local_admin_is_probed_at_its_zone(admin: tuple[str, int],
                                                        tmp_path: Path) -> None:
    """The instance is listed ``ready``, its admin URL written as RFC 6874 has it."""
    address, port = admin
    reg_dir = tmp_path / "reg"
    reg = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=30.0))
    try:
        await reg.register(Instance(service="lld", instance_id="lld-1", host=address,
                                    port=7000, meta={"admin_port": str(port)}))
        rows = await collect(f"local://{reg_dir}", ["lld"], 5.0)
    finally:
        await reg.close()
    assert [(r.instance_id, r.health) for r in rows] == [("lld-1", "ready")], rows
    bare, _, zone = address.partition("%")
    assert rows[0].admin_url == f"http://[{bare}%25{zone}]:{port}"
