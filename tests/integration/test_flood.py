"""A flood of large requests on one connection against a real server process with
meshkit's default limits: its peak memory stays bounded (issue 12 item 6)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc

from tests.support.flood_server import SERVICE
from tests.support.procs import children

_MIB = 1 << 20
CONCURRENT = 200
SIZE = 3_900_000  # under the default 4 MiB receive limit
# Measured on a 2-core VM: +259..+402 MiB peak growth when every one of the 32 call slots
# read its request at once; +104..+144 MiB with 4 concurrent reads (see ServerLimits).
PEAK_GROWTH_MIB = 200


def _status_mib(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


async def test_flood_of_large_requests_on_one_connection_stays_bounded(
    tmp_path: Path,
) -> None:
    """200 concurrent 3.9 MB requests over one plain grpc connection (not a mesh client:
    nothing is retried) to a server with the default ServerLimits: the server's peak
    resident memory grows by at most PEAK_GROWTH_MIB, some calls are shed with
    RESOURCE_EXHAUSTED, and none fails with anything but the handler's answer or a
    shed."""
    uri = f"local://{tmp_path / 'registry'}?ttl_s=2"
    async with children(tmp_path / "logs") as kids:
        server = await kids.start("tests.support.flood_server", "--registry", uri)
        fields = (await server.wait_line("port ", timeout_s=20)).split()
        port, pid = int(fields[1]), int(fields[3])
        request = b"X" * SIZE
        codes: Counter[str] = Counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            place = ch.unary_unary(f"/{SERVICE}/Place")
            try:  # a warm connection, as a long-lived client's would be
                await place(b"x", timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
            await asyncio.sleep(0.3)
            base = _status_mib(pid)["VmRSS"]

            async def one() -> None:
                try:
                    await place(request, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1

            await asyncio.gather(*(one() for _ in range(CONCURRENT)))
        peak = _status_mib(pid)["VmHWM"]
    growth = peak - base
    assert growth <= PEAK_GROWTH_MIB, (
        f"peak grew {growth:.0f} MiB ({base:.0f} -> {peak:.0f}); answers {dict(codes)}")
    assert codes["RESOURCE_EXHAUSTED"] > 0, dict(codes)
    assert set(codes) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "CANCELLED"}, dict(codes)
