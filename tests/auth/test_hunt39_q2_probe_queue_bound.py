"""The renewal probes (``HandshakeDiagnosis.explain``) share the channel's probe bound.

What a user saw: a half-done CA rotation (the client renewed into a CA the servers do not
trust yet) on a channel to 1,000 endpoints: each renewed sub-channel that could not
connect asked ``explain()`` why, and every one of them waited for a probe slot: 1,000
probes queued two at a time (each up to its 5 s timeout), the failure probes of
endpoints going ``TRANSIENT_FAILURE`` meanwhile behind them, and each renewed
sub-channel's promotion behind its own probe. Now ``explain()`` counts against the same
bound as the failure probes (:data:`PROBES_AT_ONCE` running + :data:`PROBES_WAITING`
waiting): beyond it it answers ``None`` at once (the warning is logged without a reason).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from meshkit.auth._probe import PROBES_AT_ONCE, PROBES_WAITING, HandshakeDiagnosis

pytestmark = pytest.mark.timeout(60)

_ENDPOINTS = 1000


async def test_renewal_probes_are_bounded_and_leave_room_for_failure_probes() -> None:
    gate = asyncio.Event()
    probed: list[tuple[str, int]] = []

    async def probe(host: str, port: int) -> str | None:
        probed.append((host, port))
        await gate.wait()
        return "certificate verify failed: unable to get local issuer certificate"

    diagnosis = HandshakeDiagnosis("whod", probe)
    explains = [asyncio.ensure_future(diagnosis.explain(f"127.0.0.1:{1000 + i}"))
                for i in range(_ENDPOINTS)]
    for _ in range(5):
        await asyncio.sleep(0)
    bound = PROBES_AT_ONCE + PROBES_WAITING
    answered = [t for t in explains if t.done()]
    # beyond the bound: answered None at once, not queued
    assert len(answered) == _ENDPOINTS - bound, len(answered)
    assert all(t.result() is None for t in answered)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*explains), 30)
    assert len(probed) == bound
    assert sum(r is not None for r in results) == bound
    # once they are done, a failure probe is started again (the bound is free)
    gate.clear()
    run = diagnosis.observe("w1", "127.0.0.1:7", grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    assert run is not None
    gate.set()
    await asyncio.wait_for(run, 10)
    assert diagnosis.reason("w1") is not None


async def test_a_failure_probe_is_not_queued_behind_the_full_bound_of_renewal_probes(
        ) -> None:
    """While renewal probes fill the bound, a failure probe is not started (it would wait
    behind them); it is probed at its endpoint's next failure."""
    gate = asyncio.Event()

    async def probe(host: str, port: int) -> str | None:
        await gate.wait()
        return None

    diagnosis = HandshakeDiagnosis("whod", probe)
    explains = [asyncio.ensure_future(diagnosis.explain(f"127.0.0.1:{1000 + i}"))
                for i in range(PROBES_AT_ONCE + PROBES_WAITING)]
    await asyncio.sleep(0)
    assert diagnosis.observe("w1", "127.0.0.1:7",
                             grpc.ChannelConnectivity.TRANSIENT_FAILURE) is None
    gate.set()
    await asyncio.wait_for(asyncio.gather(*explains), 10)
