"""``meshkit demo --keep-running`` over mTLS, left up past its workload certificates' life.

The demo issues its workload certificates (userd, orderd, summaryd, the edge client) for
:data:`examples.ecom.demo.CERT_TTL_H` (2 h) and did not renew them: a stack left running
(``make demo DEMO_ARGS="--keep-running"``) stopped answering two hours in, every pasted
``meshkit call`` failing its TLS handshake (UNAVAILABLE). The demo now renews them at half
their life, and the services take the renewed pair (they reload their certificate files).
Here the life is shortened to seconds (the module constant, set before the demo runs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.auth import describe_certificate, load_certificate

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)

#: The shortened certificate life (seconds): renewed after half of it (10 s: the services
#: re-read their files at most every 5 s and at each handshake after that, a new
#: ``meshkit call`` reads them at its start, so each pair is taken with 5 s or more left).
TTL_S = 20.0


def _demo_with_short_certificates(workdir: Path) -> list[str]:
    code = ("import sys, examples.ecom.demo as d; "
            f"d.CERT_TTL_H = {TTL_S} / 3600; "
            f"sys.exit(d.main(['--calls', '10', '--no-kill', '--keep-running', "
            f"'--workdir', {str(workdir)!r}]))")
    return [sys.executable, "-c", code]


def _call(cert_dir: Path, registry_uri: str, email: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(MESHKIT_REGISTRY=registry_uri, MESHKIT_CERT_DIR=str(cert_dir),
               MESHKIT_WORKLOAD="edge")
    request = f'{{"email": "{email}", "name": "Late", "password": "correct horse"}}'
    return subprocess.run(
        [str(Path(sys.executable).parent / "meshkit"), "call", "--timeout-s", "10",
         "userd/CreateUser", request],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


async def test_a_kept_stack_still_answers_after_its_first_certificates_expired(
        tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        *_demo_with_short_certificates(workdir), cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    drain: asyncio.Task[bytes] | None = None
    cert_dir = workdir / "certs"
    first: dt.datetime | None = None

    async def until_kept() -> None:
        nonlocal first
        async for raw in proc.stdout:  # type: ignore[union-attr]
            lines.append(raw.decode())
            if first is None and cert_dir.joinpath("userd.pem").exists():
                # the first line comes once the first certificates were issued, and before
                # renewal starts (a TTL_S / 2 sleep): this is the first certificate even
                # when the stack takes longer than that to come up (a loaded machine)
                first = describe_certificate(load_certificate(cert_dir / "userd.pem")).not_after
            if lines[-1].startswith("From Python:"):
                return
        raise AssertionError("the demo ended:\n" + "".join(lines))

    try:
        await asyncio.wait_for(until_kept(), 120)
        text = "".join(lines)
        registry_uri = next(line.split("=", 1)[1].strip().strip("'")
                            for line in text.splitlines() if "export MESHKIT_REGISTRY=" in line)
        assert first is not None, text
        assert first - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=TTL_S + 5), first
        # before: every call now failed its handshake (userd's and the edge's certificates
        # expired); the demo's output is drained meanwhile so it never blocks on a pipe
        drain = asyncio.create_task(proc.stdout.read())
        past = first + dt.timedelta(seconds=3) - dt.datetime.now(dt.UTC)
        await asyncio.sleep(max(0.0, past.total_seconds()))
        assert not drain.done(), "the demo ended while kept running"
        done = await asyncio.to_thread(_call, cert_dir, registry_uri, "late@example.com")
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert '"late@example.com"' in done.stdout
        renewed = describe_certificate(load_certificate(cert_dir / "userd.pem")).not_after
        assert renewed > first
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        if drain is None:
            drain = asyncio.create_task(proc.stdout.read())
        out = await asyncio.wait_for(drain, 60)
        await asyncio.wait_for(proc.wait(), 30)
    text = out.decode(errors="replace")
    assert proc.returncode == 0 and "Stopped every process (SIGTERM, drained)" in text, \
        text[-3000:]  # Ctrl-C ends a kept stack with the run's code
    assert "could not be renewed" not in text, text[-3000:]
